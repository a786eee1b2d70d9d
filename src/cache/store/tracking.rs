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
//!
//! On a Cluster, tracking must be on at every primary the store reads from. The store's clients learn of a new
//! primary (a node that joined and took slots, a promoted replica) when a read there is redirected, before the
//! near cache keeps what it read; their cluster-change events, and every probe, compare the primaries they
//! know with those tracked, and any new one re-arms tracking (reading the cluster afresh) before the near
//! cache answers again.
//!
//! fred's cluster client connects to every primary or to none, so while one primary is out of reach (killed, its
//! host down, and no replica promoted yet, or none to promote) the tracking connection sends nothing. Tracking then
//! goes on a connection of its own to each primary that answers, and the near cache answers the keys of the slots
//! those serve (in the store's view of the Cluster, which reads them from there too), each primary within
//! [`LIVENESS`](crate::cache::near::LIVENESS) of its own probe: a Cluster that lost a shard keeps the others' near
//! hits. Any doubt (a probe that fails, a connection made again, another view of the Cluster) ends it, and
//! once the cluster client connects again tracking rides it as before, from an empty near cache.

use super::redis::{RedisStore, stop, stop_in_background};
use super::sentinel::Primary;
use crate::cache::near::{FlushCause, Near, Partly, Tracking};
use fred::clients::Client;
use fred::interfaces::TrackingInterface;
use fred::interfaces::{
    ClientInterface, ClientLike, ClusterInterface, EventInterface, KeysInterface,
};
use fred::prelude::{Builder, Config, ReconnectPolicy, SetOptions, Value};
use fred::types::client::Invalidation;
use fred::types::cluster::ClusterRouting;
use fred::types::config::Server;
use fred::types::config::ServerConfig;
use fred::types::{ClientState, ClusterStateChange, ConnectHandle, RespVersion};
use futures_util::future::BoxFuture;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::broadcast::Receiver;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::watch;

/// How often the tracking connection is probed.
pub(crate) const PROBE_EVERY: Duration = Duration::from_millis(250);
/// How long a probe may take before tracking is in doubt.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Tracking for a [`RedisStore`]: a connection of its own, with the store's configuration in RESP3.
pub(crate) struct RedisTracking {
    config: Config,
    /// On a Cluster, the store's own clients, whose view of the cluster says which primaries the near cache
    /// fills from; empty otherwise.
    store: Vec<Client>,
    /// Behind Sentinel, the primary as the sentinels last named it: where the store reads.
    primaries: Option<Primaries>,
}

/// The primary as the sentinels last named it.
type Primaries = watch::Receiver<Option<Primary>>;

impl RedisStore {
    /// The tracking side of the near cache for this store.
    pub(crate) fn tracking(&self) -> Arc<dyn Tracking> {
        Arc::new(RedisTracking {
            config: self.config(),
            store: self.cluster_clients(),
            primaries: self.primaries(),
        })
    }
}

impl Tracking for RedisTracking {
    fn run(&self, prefix: String, near: Weak<Near>) -> BoxFuture<'static, ()> {
        Box::pin(run(
            self.config.clone(),
            self.store.clone(),
            self.primaries.clone(),
            prefix,
            near,
        ))
    }
}

async fn run(
    mut config: Config,
    store: Vec<Client>,
    mut named_by_sentinel: Option<Primaries>,
    prefix: String,
    near: Weak<Near>,
) {
    config.version = RespVersion::RESP3;
    let client = match tracking_client(config) {
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
    // The store learns of a new primary (a slot moved to a node that joined, a replica promoted) when it reads
    // there, and the near cache would keep what it read: tracking must be on there first.
    let mut store_changes: Vec<_> = store.iter().map(|c| c.cluster_change_rx()).collect();
    let canary = format!("{prefix}near-canary");
    // Whether the refusal that keeps tracking off was told at `warn`: once, until tracking is on again.
    let mut told = false;
    // Behind Sentinel, the last primary the sentinels named that tracking followed.
    let mut followed = None;
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
            connected(&client).await?;
            arm(&client, &prefix, &canary).await
        })
        .await;
        let (canaries, primaries) = match armed {
            // The store knows a primary the cluster, read just now, does not name: either this view is the
            // older (a node joined a moment ago) or the store's is (it never read from a slot since it moved
            // off a node). Have the store read the cluster afresh too, and try again, rather than vouch for
            // reads this connection may not hear about, or stay off until the store happens on a redirection.
            Ok(Ok((_, primaries))) if uncovered(&store, &primaries) => {
                tracing::debug!(
                    "near cache: the store knows a primary tracking is not on; both read the cluster again"
                );
                for client in &store {
                    let _ = client.sync_cluster().await;
                }
                tokio::time::sleep(PROBE_EVERY).await;
                continue;
            }
            Ok(Ok(armed)) => armed,
            // A replica that was the primary refused the canary (the connection stayed where it was when a
            // failover moved the address on): connect again, to whatever the address names now.
            Ok(Err(error)) if super::redis::is_replica_reply(&error) => {
                tracing::debug!(%error, "near cache: tracking reached a replica; connecting again");
                let _ = client.force_reconnection().await;
                tokio::time::sleep(PROBE_EVERY).await;
                continue;
            }
            // The server cannot answer yet (`LOADING` its snapshot after a restart, `BUSY` with a script): it
            // will, and no operator need do anything, so this is no refusal to warn of.
            Ok(Err(error)) if super::redis::is_unready_reply(&error) => {
                tracing::debug!(%error, "near cache: Redis is not ready to track yet; retrying");
                tokio::time::sleep(PROBE_EVERY).await;
                continue;
            }
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
                // A Cluster's tracking client that cannot connect (a primary out of reach): track the others.
                if !store.is_empty() && client.state() != ClientState::Connected {
                    let Some(alive) = near.upgrade() else { break };
                    if let Some(partly) =
                        arm_partly(&client, &store, &prefix, &canary, &alive).await
                    {
                        drop(alive);
                        partly
                            .run(&client, &store, &mut store_changes, &near, &canary)
                            .await;
                        continue;
                    }
                }
                tokio::time::sleep(PROBE_EVERY).await;
                continue;
            }
        };
        // Sentinel named another primary while this connection stayed on the old one (which lives on after a
        // failover an operator ordered): the store reads from the new one, so tracking must be on there.
        let named = named_by_sentinel
            .as_mut()
            .and_then(|p| p.borrow_and_update().clone());
        if must_follow(&client, named, &mut followed) {
            let _ = client.force_reconnection().await;
            continue;
        }
        // Connection events from before tracking was armed (the first connect among them) are settled.
        while !reconnects.is_empty() {
            let _ = reconnects.try_recv();
        }
        while !changes.is_empty() {
            let _ = changes.try_recv();
        }
        for changes in &mut store_changes {
            while !changes.is_empty() {
                let _ = changes.try_recv();
            }
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
                        Ok(invalidation) => hear(&near, &invalidation, &canary),
                        // Invalidations were missed: nothing kept before now can be trusted.
                        Err(RecvError::Lagged(_)) => near.flush(FlushCause::Connection),
                        Err(RecvError::Closed) => continue 'arming,
                    }
                }
                _ = reconnects.recv() => continue 'arming,
                // Each telling (the watch tells again at a few checks after a change): connected elsewhere, follow.
                named = next_named(&mut named_by_sentinel) => {
                    if named.is_some_and(|primary| primary.strays(&client)) {
                        tracing::debug!("near cache: Sentinel named a new primary; tracking follows");
                        let _ = client.force_reconnection().await;
                        continue 'arming;
                    }
                }
                _ = changes.recv() => continue 'arming,
                () = any_change(&mut store_changes) => {
                    if uncovered(&store, &primaries) {
                        continue 'arming;
                    }
                }
                _ = probe.tick() => {
                    let Some(near) = near.upgrade() else { break 'arming };
                    // A change the store saw while this task was busy is caught here.
                    if uncovered(&store, &primaries) {
                        continue 'arming;
                    }
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
    stop(client, task).await;
}

/// Waits until `client` is connected, or its connection attempt failed: fred's `wait_for_connect`, with the state
/// also looked at every 10 ms, since fred's looks at it before it subscribes, and so misses a connection made
/// between the two (it would then wait for the next one, or for its caller's bound).
async fn connected(client: &Client) -> fred::prelude::FredResult<()> {
    let polled = async {
        while client.state() != ClientState::Connected {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    };
    tokio::select! {
        waited = client.wait_for_connect() => waited,
        polled = polled => polled,
    }
}

/// The tracking client of `config`: RESP3, reconnecting every 100 ms, its connection probed.
fn tracking_client(config: Config) -> fred::prelude::FredResult<Client> {
    Builder::from_config(config)
        .set_policy(ReconnectPolicy::new_constant(0, 100))
        .with_connection_config(super::redis::watched_connection_config)
        // A lagging receiver has missed invalidations and must empty the near cache: make that rare.
        .with_performance_config(|p| p.broadcast_channel_capacity = 4096)
        .build()
}

/// Drops from `near` what `invalidation` names; a canary's (or none: a flush) empties it.
fn hear(near: &Near, invalidation: &Invalidation, canary: &str) {
    if invalidation.keys.is_empty() {
        near.flush(FlushCause::Server);
    }
    for key in &invalidation.keys {
        match key.as_str() {
            Some(key) if key.starts_with(canary) => near.flush(FlushCause::Server),
            Some(key) => near.invalidate([key]),
            // Not one of ours (our keys are UTF-8): nothing to drop.
            None => {}
        }
    }
}

/// Tracking on connections of its own to the primaries of a Cluster that answer, while the cluster client
/// cannot connect (see the module docs).
struct Partial {
    /// Each primary's connection, with its connection task and its canary; their order is that of the near
    /// cache's `partly`.
    primaries: Vec<(Client, ConnectHandle, String)>,
    /// Each connection's invalidations, subscribed to before it connected, so that none is missed.
    invalidations: Vec<Receiver<Invalidation>>,
    /// Each connection's reconnections, since tracking went on there.
    reconnects: Vec<Receiver<Server>>,
    partly: Arc<Partly>,
    /// The store's views of the Cluster when tracking went on: the slots the near cache answers follow them.
    views: Vec<Vec<(u16, u16, Server)>>,
}

/// One primary's connection, with tracking on, its connection task, its canary, and its receivers (see
/// [`Partial`]).
type Armed = (
    Server,
    Client,
    ConnectHandle,
    String,
    Receiver<Invalidation>,
    Receiver<Server>,
);

/// Switches tracking on at each primary of the store's view of the Cluster that answers, on a connection of its
/// own (made with `client`'s settings), plants a canary on each, and has `near` answer the keys of their slots;
/// `None` when none answers, or no slot is served by one of them in the view of every store client.
async fn arm_partly(
    client: &Client,
    store: &[Client],
    prefix: &str,
    canary: &str,
    near: &Near,
) -> Option<Partial> {
    let state = store.first()?.cached_cluster_state()?;
    let views = views(store)?;
    let primaries = state.unique_primary_nodes();
    let armed = futures_util::future::join_all(
        primaries
            .iter()
            .map(|primary| arm_primary(client, &state, primary, prefix, canary)),
    )
    .await;
    let armed: Vec<Armed> = armed.into_iter().flatten().collect();
    let owners = owners(&views, &armed);
    if owners.iter().all(Option::is_none) {
        for (_, tracker, task, ..) in armed {
            stop_in_background(tracker, task);
        }
        return None;
    }
    tracing::debug!(
        primaries = armed.len(),
        of = primaries.len(),
        "near cache: the cluster client cannot connect; tracking is on at the primaries that answer"
    );
    let partly = near.arm_partly(owners, armed.len());
    for index in 0..armed.len() {
        near.pong_primary(&partly, index);
    }
    let mut partial = Partial {
        primaries: Vec::new(),
        invalidations: Vec::new(),
        reconnects: Vec::new(),
        partly,
        views,
    };
    for (_, tracker, task, canary, invalidations, reconnects) in armed {
        partial.primaries.push((tracker, task, canary));
        partial.invalidations.push(invalidations);
        partial.reconnects.push(reconnects);
    }
    Some(partial)
}

/// Switches tracking on at `primary` on a connection of its own (made with `client`'s settings) and plants its
/// canary there; `None` if that fails (the connection refused, a command refused) or takes more than a second.
async fn arm_primary(
    client: &Client,
    state: &ClusterRouting,
    primary: &Server,
    prefix: &str,
    canary: &str,
) -> Option<Armed> {
    let canary = canary_on(state, primary, canary).ok()?;
    let mut config = client.client_config();
    config.server = ServerConfig::Centralized {
        server: primary.clone(),
    };
    let tracker = tracking_client(config).ok()?;
    let (invalidations, mut reconnects) = (tracker.invalidation_rx(), tracker.reconnect_rx());
    let task = tracker.connect();
    let armed = tokio::time::timeout(Duration::from_secs(1), async {
        connected(&tracker).await?;
        track(&tracker, prefix).await?;
        plant(&tracker, std::slice::from_ref(&canary)).await
    })
    .await;
    if !matches!(armed, Ok(Ok(()))) {
        stop_in_background(tracker, task);
        return None;
    }
    // Its first connection (fred tells each one, the first too) is settled.
    while reconnects.try_recv().is_ok() {}
    Some((
        primary.clone(),
        tracker,
        task,
        canary,
        invalidations,
        reconnects,
    ))
}

/// Each hash slot's primary among `armed`, when every view of `views` reads the slot from it.
fn owners(views: &[Vec<(u16, u16, Server)>], armed: &[Armed]) -> Vec<Option<u16>> {
    let mut owners = vec![None; usize::from(SLOTS)];
    for (start, end, server) in views.first().into_iter().flatten() {
        let index = armed
            .iter()
            .position(|(primary, ..)| primary == server)
            .and_then(|i| u16::try_from(i).ok());
        for owner in owners
            .iter_mut()
            .take(usize::from(*end) + 1)
            .skip(usize::from(*start))
        {
            *owner = index;
        }
    }
    for (start, end, server) in views.iter().skip(1).flatten() {
        for owner in owners
            .iter_mut()
            .take(usize::from(*end) + 1)
            .skip(usize::from(*start))
        {
            let theirs = owner.and_then(|i| armed.get(usize::from(i)));
            if theirs.is_some_and(|(primary, ..)| primary != server) {
                *owner = None;
            }
        }
    }
    owners
}

/// How many hash slots a Cluster has.
const SLOTS: u16 = 16_384;

/// Each store client's view of the Cluster, as slot ranges and their primaries; `None` while one has none.
fn views(store: &[Client]) -> Option<Vec<Vec<(u16, u16, Server)>>> {
    store
        .iter()
        .map(|client| {
            let state = client.cached_cluster_state()?;
            let mut ranges: Vec<_> = state
                .slots()
                .iter()
                .map(|range| (range.start, range.end, range.primary.clone()))
                .collect();
            ranges.sort_unstable_by_key(|range| range.0);
            Some(ranges)
        })
        .collect()
}

impl Partial {
    /// Hears each primary's invalidations and probes it, for as long as nothing casts doubt on them and the
    /// cluster client `client` cannot connect; then stops each primary's connection.
    async fn run(
        mut self,
        client: &Client,
        store: &[Client],
        store_changes: &mut Vec<Receiver<Vec<ClusterStateChange>>>,
        near: &Weak<Near>,
        canary: &str,
    ) {
        let mut probe = tokio::time::interval(PROBE_EVERY);
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                (message, _) = any_message(&mut self.invalidations) => {
                    let Some(near) = near.upgrade() else { break };
                    match message {
                        Ok(invalidation) => hear(&near, &invalidation, canary),
                        // Missed invalidations, or a connection gone: start again.
                        Err(_) => break,
                    }
                }
                _ = any_message(&mut self.reconnects) => break,
                () = any_change(store_changes) => {
                    if views(store).as_ref() != Some(&self.views) {
                        break;
                    }
                }
                _ = probe.tick() => {
                    let Some(near) = near.upgrade() else { break };
                    // Connected to every primary again (or the Cluster changed): track them all as before.
                    if client.state() == ClientState::Connected || views(store).as_ref() != Some(&self.views) {
                        break;
                    }
                    if !self.probe(&near).await {
                        break;
                    }
                }
            }
        }
        for (tracker, task, _) in self.primaries {
            stop_in_background(tracker, task);
        }
    }

    /// Probes each primary's connection (its canary still there); `false` at the first that fails.
    async fn probe(&self, near: &Near) -> bool {
        for (index, (tracker, _, canary)) in self.primaries.iter().enumerate() {
            let canaries = std::slice::from_ref(canary);
            match tokio::time::timeout(PROBE_TIMEOUT, canaries_present(tracker, canaries)).await {
                Ok(Ok(true)) => {}
                // Flushed: start again from an empty near cache, the canaries planted anew.
                Ok(Ok(false)) => {
                    near.flush(FlushCause::Server);
                    if plant(tracker, canaries).await.is_err() {
                        return false;
                    }
                }
                _ => return false,
            }
            near.pong_primary(&self.partly, index);
        }
        true
    }
}

/// The next message of any of `receivers` (or the error of the first that lagged or closed), with the index of
/// its receiver; never, without any.
async fn any_message<T: Clone>(receivers: &mut [Receiver<T>]) -> (Result<T, RecvError>, usize) {
    if receivers.is_empty() {
        return std::future::pending().await;
    }
    let (result, index, _) =
        futures_util::future::select_all(receivers.iter_mut().map(|r| Box::pin(r.recv()))).await;
    (result, index)
}

/// Switches tracking on at every primary and plants a canary on each; returns the canaries and, on a
/// Cluster, the primaries.
async fn arm(
    client: &Client,
    prefix: &str,
    canary: &str,
) -> fred::prelude::FredResult<(Vec<String>, Vec<Server>)> {
    let mut canaries = Vec::new();
    let mut primaries = Vec::new();
    if client.is_clustered() {
        // The cluster as it is now, not as it was when this connection last followed a redirection.
        client.sync_cluster().await?;
        let state = client.cached_cluster_state().ok_or_else(|| {
            fred::error::Error::new(fred::error::ErrorKind::Cluster, "no cluster state yet")
        })?;
        primaries = state.unique_primary_nodes();
        for primary in &primaries {
            track(&client.with_cluster_node(primary.clone()), prefix).await?;
            canaries.push(canary_on(&state, primary, canary)?);
        }
    } else {
        track(client, prefix).await?;
        canaries.push(canary.to_owned());
    }
    plant(client, &canaries).await?;
    Ok((canaries, primaries))
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

/// Whether tracking, armed just now, must connect again to follow `named`, a primary the sentinels named: when
/// it has not followed that one yet and is connected elsewhere. Each primary once here, so that arming cannot
/// loop; the watch's later tellings (a few, after each change) try again.
fn must_follow(client: &Client, named: Option<Primary>, followed: &mut Option<Primary>) -> bool {
    match named {
        Some(primary) if followed.as_ref() != Some(&primary) => {
            let strays = primary.strays(client);
            *followed = Some(primary);
            strays
        }
        _ => false,
    }
}

/// Waits until the sentinels name another primary, and returns it; never, for a store not behind Sentinel
/// (or once its watch has ended).
async fn next_named(primaries: &mut Option<Primaries>) -> Option<Primary> {
    if let Some(receiver) = primaries {
        if receiver.changed().await.is_ok() {
            return receiver.borrow_and_update().clone();
        }
        *primaries = None;
    }
    std::future::pending().await
}

/// Whether a store client knows a primary that is not among `tracked` (Cluster only).
fn uncovered(store: &[Client], tracked: &[Server]) -> bool {
    store.iter().any(|client| {
        client.cached_cluster_state().is_some_and(|state| {
            state
                .unique_primary_nodes()
                .iter()
                .any(|primary| !tracked.contains(primary))
        })
    })
}

/// Waits until a store client's view of the cluster changed (or its changes were missed); never, without any.
async fn any_change(receivers: &mut Vec<Receiver<Vec<ClusterStateChange>>>) {
    loop {
        match any_message(receivers).await {
            (Ok(_) | Err(RecvError::Lagged(_)), _) => return,
            // That client is gone: wait on the others.
            (Err(RecvError::Closed), index) => drop(receivers.swap_remove(index)),
        }
    }
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
