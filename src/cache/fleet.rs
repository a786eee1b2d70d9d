//! One origin call per key for the whole fleet: fenced leases, and waiting for another process's fill.
//!
//! A lease (`<key>:lease`, in the entry's hash slot) holds a token unique to its holder. Taking it is
//! `SET NX PX`; extending and releasing it are compare-and-act (Lua, by SHA), so a holder whose lease expired
//! can never extend or remove the next holder's. A holder renews its lease while its origin call runs (every
//! third of the lease), so the lease cannot expire under a live call and still expires soon after the holder
//! dies; a holder whose future is dropped (a cancelled request) releases it at once.
//!
//! Answers are stored only under a lease still held (`Store::set_if_leased`, one step), and invalidations
//! remove the lease before the entry: a fill whose origin call started before a change it was told of never
//! stores its answer after that change.
//!
//! The first process to miss a key takes the lease and fills the entry; another process that misses while the
//! lease is held waits for that entry instead of calling the origin: woken by the near cache's invalidation push
//! when it has one, else by a short poll with backoff. It stops waiting when the entry arrives, takes the lease
//! over when it disappears without an entry, and gives up after [`fleet_wait`] to call the origin itself.
//!
//! [`fleet_wait`]: crate::cache::RedisCacheLayerBuilder::fleet_wait

use super::decision::{Forward, Lookup, RequestFacts, decide};
use super::engine::{Engine, millis};
use super::entry::{Entry, Unstored};
use super::key::{CacheKey, vary_digest};
use super::stats::{add, bump};
use super::tags::Tags;
use crate::error::StoreError;
use http::{HeaderMap, request};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// The first poll of a waiter comes this soon; each next one twice as late, up to [`MAX_POLL`].
const FIRST_POLL: Duration = Duration::from_millis(5);
/// The longest gap between two looks at the entry while waiting.
const MAX_POLL: Duration = Duration::from_millis(50);

/// The pause before each attempt to let go of a lease whose call failed: none before the first, then 1 s and 2 s
/// (a command held in a reconnect runs once the connection is back).
const LET_GO_AGAIN: [Duration; 3] = [
    Duration::ZERO,
    Duration::from_secs(1),
    Duration::from_secs(2),
];

/// Whether a store call that failed with `error` may have run all the same: it timed out, or its connection
/// failed after it was sent. Not a refusal (the server answered no) nor a call the breaker never let out.
fn may_have_run(error: &StoreError) -> bool {
    !matches!(error, StoreError::Refused(_) | StoreError::Unavailable)
}

/// A lease this process holds.
#[derive(Debug)]
pub(crate) struct Lease {
    pub(super) key: String,
    pub(super) token: String,
    /// The tag sets the key was recorded in while this lease was taken (see [`super::tags`]).
    pub(super) tag_sets: Vec<String>,
    /// Until when (the cache's clock, unix ms) the key stays in them.
    pub(super) tagged_until: u64,
    /// The tag clock, read before the origin was asked, when answers may carry tags (see [`super::tags`]).
    pub(super) since: Option<u64>,
}

/// A held lease that is released when dropped (a cancelled request lets the next holder in at once) unless it
/// was released or kept on purpose.
pub(crate) struct LeaseGuard {
    engine: Arc<Engine>,
    lease: Option<Lease>,
}

impl LeaseGuard {
    /// The held lease.
    pub(crate) fn lease(&self) -> Option<&Lease> {
        self.lease.as_ref()
    }

    /// Releases the lease now (only if it still holds this holder's token).
    pub(crate) async fn release(mut self) {
        if let Some(lease) = self.lease.take() {
            let _ = self
                .engine
                .store
                .call("unlease", &lease.key, |s| {
                    s.release_lease(&lease.key, &lease.token)
                })
                .await;
        }
    }

    /// Lets the guard go without releasing the lease: the store removed it already (with the write of an
    /// answer), or it is left to expire on its own (after a failed refresh: it spaces out the retries).
    pub(crate) fn disarm(mut self) {
        self.lease = None;
    }
}

impl Drop for LeaseGuard {
    fn drop(&mut self) {
        let Some(lease) = self.lease.take() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let engine = self.engine.clone();
        let task = engine.background.task();
        runtime.spawn(async move {
            let _task = task;
            let _ = engine
                .store
                .call("unlease", &lease.key, |s| {
                    s.release_lease(&lease.key, &lease.token)
                })
                .await;
        });
    }
}

/// What a look at a key found while waiting for another process's fill.
enum Found {
    /// A new entry that answers the request fresh.
    Entry(Entry),
    /// A marker: the holder's answer could not be stored.
    Unstored,
    Nothing,
}

/// How a wait for another process's fill ended.
pub(crate) enum Waited {
    /// The entry arrived.
    Entry(Entry),
    /// The lease went away without an entry, and this process took it: it fills the key itself.
    Took(LeaseGuard),
    /// The deadline passed: call the origin without the lease (and without storing: the holder stores).
    GaveUp,
    /// The holder's answer could not be stored (it left a marker) and the lease is held again: call the origin
    /// without waiting for that call too.
    Unstored,
    /// The store failed: call the origin without it.
    StoreFailed,
}

/// Where a miss stands in the fleet.
pub(crate) enum Turn {
    /// Another process filled the key while this one waited: its entry answers.
    Answered(Entry),
    /// This process calls the origin: holding the key's lease, or without it (another process holds it and
    /// collapsing is off, or the wait gave up), and then it does not store the answer.
    Lead(Option<LeaseGuard>),
    /// The store failed on the lease: call the origin, and do not ask the store again for this request.
    StoreFailed,
    /// The request names more tags than a fill records: call the origin, the store untouched, and store
    /// nothing ([`NotStored::Tags`](super::NotStored::Tags)).
    Untaggable,
}

/// A random token, unique to one holder of one lease.
fn token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

impl Engine {
    /// Takes the lease of `key`: `Ok(Some)` when this process holds it now, `Ok(None)` when another does.
    /// Records `key` under the request's `tags`, and reads the tag clock, beside it (before the origin is
    /// asked); `Err` when that fails for the holder (the lease is let go), when the store fails on the lease, or
    /// when the request has too many tags.
    pub(crate) async fn take_lease(
        self: &Arc<Self>,
        key: &CacheKey,
        tags: &Tags,
    ) -> Result<Option<LeaseGuard>, ()> {
        let (tag_sets, lifetime) = match tags {
            Tags::None => (Vec::new(), Duration::ZERO),
            Tags::Some(tagging) => (tagging.sets.clone(), tagging.lifetime),
            Tags::TooMany => return Err(()),
        };
        let mut lease = Lease {
            key: key.lease_key(),
            token: token(),
            tagged_until: self.clock.now_ms().saturating_add(millis(lifetime)),
            tag_sets,
            since: None,
        };
        let ttl = self.policy.lease_for;
        // Side by side, one round trip and all before the origin is asked: the lease; the request's tags,
        // recorded unconditionally; the tag clock for the tags the answer will name. Recording the key before the
        // lease is known to be ours holds the fencing either way a removal falls: one that walks a set before the
        // key is in it ran before the origin is asked; one that finds it removes the lease, and then either the
        // lease is taken after that (and the origin asked after the change) or the answer is not stored. A key
        // recorded by a process that did not get the lease is one its holder records too. A clock read before
        // the lease is at most older: a removal in between withholds the answer instead of missing it.
        let lease_call = self.store.call("lease", &lease.key, |s| {
            s.try_lease(&lease.key, &lease.token, ttl)
        });
        let request_tags = async {
            if lease.tag_sets.is_empty() {
                return Ok(());
            }
            match self
                .record_tags(key.as_str(), &lease.tag_sets, lifetime, u64::MAX)
                .await
            {
                Ok(true) => Ok(()),
                _ => Err(()),
            }
        };
        let clock = async {
            if self.policy.answer_tags() {
                self.tag_clock(false, true).await.map(Some).map_err(|_| ())
            } else {
                Ok(None)
            }
        };
        let (taken, recorded, since) =
            futures_util::future::join3(lease_call, request_tags, clock).await;
        match taken {
            Ok(true) => {
                let recorded = match (recorded, since) {
                    (Ok(()), Ok(since)) => {
                        lease.since = since;
                        Ok(())
                    }
                    _ => Err(()),
                };
                let guard = LeaseGuard {
                    engine: self.clone(),
                    lease: Some(lease),
                };
                match recorded {
                    Ok(()) => Ok(Some(guard)),
                    Err(()) => {
                        guard.release().await;
                        Err(())
                    }
                }
            }
            Ok(false) => Ok(None),
            Err(error) => {
                if may_have_run(&error) {
                    self.let_go_later(lease);
                }
                Err(())
            }
        }
    }

    /// Lets go of `lease` in the background, in case its holder's call was taken after all: a lease call that
    /// timed out, or whose connection died after it was written, can still run (fred sends a command again
    /// after a reconnect), and then every process asking for the key would wait for a holder that is not there
    /// until the lease expired (`lease_for`). Asked again [`LET_GO_AGAIN`] later, in case the call ran after
    /// the first attempt; only ever this holder's token.
    fn let_go_later(self: &Arc<Self>, lease: Lease) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let engine = self.clone();
        let task = engine.background.task();
        runtime.spawn(async move {
            let _task = task;
            for (attempt, pause) in LET_GO_AGAIN.into_iter().enumerate() {
                if attempt > 0 {
                    if engine.background.closing() {
                        return;
                    }
                    tokio::time::sleep(pause).await;
                }
                let released = engine
                    .store
                    .call("unlease", &lease.key, |s| {
                        s.release_lease(&lease.key, &lease.token)
                    })
                    .await;
                if let Ok(true) = released {
                    tracing::debug!(
                        key = lease.key.as_str(),
                        "a lease taken by a call that had failed was let go"
                    );
                    return;
                }
            }
        });
    }

    /// Takes this process's turn at a key it is about to fetch for a `forward` of the request with `parts`: the
    /// lease (with the request's tags recorded), or a wait for the process that holds it. `baseline` is the
    /// `stored_at` of the entry the request read (`None`: none, or not read). Without `wait`, a lease held
    /// elsewhere is not waited for.
    pub(crate) async fn fleet_turn(
        self: &Arc<Self>,
        key: &CacheKey,
        facts: &RequestFacts,
        parts: &request::Parts,
        forward: Forward,
        baseline: Option<u64>,
        wait: bool,
    ) -> Turn {
        // A store that just failed this request is not asked again.
        if !forward.store {
            return Turn::Lead(None);
        }
        let (headers, tags) = (&parts.headers, &self.tags_of(parts, facts));
        // Too many tags to record: answered by the origin and not stored, the store untouched and not at fault.
        if let Tags::TooMany = tags {
            return Turn::Untaggable;
        }
        match self.take_lease(key, tags).await {
            Ok(Some(lease)) => Turn::Lead(Some(lease)),
            Err(()) => Turn::StoreFailed,
            // Collapsing is off, or the key's last answer could not be stored (a marker said so): call the origin
            // at once, and leave the storing to the lease's holder.
            Ok(None) if self.policy.fleet_wait.is_zero() || !wait => Turn::Lead(None),
            Ok(None) => match self
                .wait_for_fleet(key, facts, headers, baseline, tags)
                .await
            {
                Waited::Entry(entry) => Turn::Answered(entry),
                Waited::Took(lease) => Turn::Lead(Some(lease)),
                Waited::GaveUp | Waited::Unstored => Turn::Lead(None),
                Waited::StoreFailed => Turn::StoreFailed,
            },
        }
    }

    /// Runs `work` while renewing `lease` every third of its lifetime, so that it cannot expire under a live
    /// origin call.
    ///
    /// A renewal that finds the lease gone (an invalidation or purge in any process removed it, or it expired
    /// and another process took it) calls `on_lost` and renews no more: what `work` will answer may predate
    /// the change, so a miss stops sharing its call with callers arriving from then on (its answer is not stored
    /// either: see [`Engine::write`]). With a near cache, the store's push for the lease says so at once: each
    /// push (the holder's own renewals push too) is followed by a read of the lease.
    pub(crate) async fn renewing<T>(
        &self,
        lease: Option<&Lease>,
        work: impl Future<Output = T>,
        on_lost: impl FnOnce(),
    ) -> T {
        let Some(lease) = lease else {
            return work.await;
        };
        let lease_for = self.policy.lease_for;
        let every = (lease_for / 3).max(Duration::from_millis(1));
        let mut renew = tokio::time::interval_at(Instant::now() + every, every);
        let watch = self.near.as_ref().map(|near| near.watch_lease(&lease.key));
        tokio::pin!(work);
        loop {
            let pushed = async {
                match &watch {
                    Some(watch) => watch.pushed().await,
                    None => std::future::pending().await,
                }
            };
            let held = tokio::select! {
                done = &mut work => return done,
                _ = renew.tick() => {
                    self.store
                        .call("renew", &lease.key, |s| {
                            s.extend_lease(&lease.key, &lease.token, lease_for)
                        })
                        .await
                }
                () = pushed => {
                    self.store
                        .call("lease-check", &lease.key, |s| s.get(&lease.key))
                        .await
                        .map(|value| value.as_deref() == Some(lease.token.as_bytes()))
                }
            };
            match held {
                Ok(true) => {}
                Ok(false) => {
                    tracing::debug!(lease = lease.key, "lease lost: no longer renewed");
                    // Stops the watch; a no-op in a build without the near cache (no `redis` feature).
                    #[allow(clippy::drop_non_drop)]
                    drop(watch);
                    on_lost();
                    return work.await;
                }
                Err(_) => tracing::debug!(
                    lease = lease.key,
                    "lease not renewed or read: store failing"
                ),
            }
        }
    }

    /// Waits for the entry another process is filling for `key`: one that was not there as `baseline`
    /// (`stored_at`, or `None` for none) and that would answer this request fresh.
    pub(crate) async fn wait_for_fleet(
        self: &Arc<Self>,
        key: &CacheKey,
        facts: &RequestFacts,
        headers: &HeaderMap,
        baseline: Option<u64>,
        tags: &Tags,
    ) -> Waited {
        let started = Instant::now();
        let deadline = started + self.policy.fleet_wait;
        let mut poll = FIRST_POLL;
        bump(&self.counters.fleet_waits);
        let waited = loop {
            // Registered before looking, so that a push between the look and the sleep still wakes it.
            let pushed = self.near.as_ref().map(|near| near.changed());
            tokio::pin!(pushed);
            if let Some(pushed) = pushed.as_mut().as_pin_mut() {
                pushed.enable();
            }
            let marked = match self.new_fresh_entry(key, facts, headers, baseline).await {
                Found::Entry(entry) => break Waited::Entry(entry),
                Found::Unstored => true,
                Found::Nothing => false,
            };
            match self.take_lease(key, tags).await {
                Ok(Some(lease)) => {
                    // The holder may have stored and let go between the look and the lease.
                    if let Found::Entry(entry) =
                        self.new_fresh_entry(key, facts, headers, baseline).await
                    {
                        lease.release().await;
                        break Waited::Entry(entry);
                    }
                    bump(&self.counters.fleet_takeovers);
                    break Waited::Took(lease);
                }
                // Another caller is at it again, and its answer will not be stored either.
                Ok(None) if marked => {
                    bump(&self.counters.uncacheable_misses);
                    break Waited::Unstored;
                }
                Ok(None) => {}
                Err(()) => break Waited::StoreFailed,
            }
            let now = Instant::now();
            if now >= deadline {
                bump(&self.counters.fleet_timeouts);
                break Waited::GaveUp;
            }
            let nap = tokio::time::sleep(poll.min(deadline - now));
            match pushed.as_mut().as_pin_mut() {
                Some(pushed) => {
                    tokio::select! {
                        _ = nap => {}
                        _ = pushed => {}
                    }
                }
                None => nap.await,
            }
            poll = (poll * 2).min(MAX_POLL);
        };
        let waited_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        add(&self.counters.fleet_wait_ms, waited_ms);
        waited
    }

    /// The entry of `key` if it is not the one of `baseline` and answers this request fresh, or the marker
    /// saying the last answer could not be stored.
    async fn new_fresh_entry(
        &self,
        key: &CacheKey,
        facts: &RequestFacts,
        headers: &HeaderMap,
        baseline: Option<u64>,
    ) -> Found {
        let Ok(Some(bytes)) = self.read_bytes(key).await else {
            return Found::Nothing;
        };
        if Unstored::read(&bytes, key.digest()).is_some() {
            return Found::Unstored;
        }
        let Some(entry) = self.decode(key, &bytes) else {
            return Found::Nothing;
        };
        if Some(entry.stored_at) == baseline {
            return Found::Nothing;
        }
        let stored = entry.stored(vary_digest(&entry.headers, headers) == entry.vary);
        let now = self.clock.now_ms();
        // The request's own `no-cache` asked for a new answer, which this is.
        let facts = RequestFacts {
            no_cache: false,
            ..*facts
        };
        let fresh = decide(&self.policy.rules, &facts, Lookup::Found(stored), now);
        if fresh.is_fresh() {
            Found::Entry(entry)
        } else {
            Found::Nothing
        }
    }
}
