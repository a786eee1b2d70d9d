//! Tags: sets of entries removed together, by [`CacheHandle::invalidate_tag`] or by an unsafe request with
//! one of their tags (see [`RedisCacheLayerBuilder::tags`] and
//! [`tags_from_header`](super::RedisCacheLayerBuilder::tags_from_header)).
//!
//! A tag's set (`<namespace>:v1:tag:{<digest>}`, a sorted set on Redis) holds the keys of the entries stored
//! with it, each until its entry's longest possible life. A removal first marks the set invalidated at a
//! reading of the namespace's tag clock, then walks it and, for each key, removes the lease and then the
//! entry, as [`CacheHandle::invalidate`] does. No fill that may bring back an answer from before the removal
//! stores it afterwards:
//!
//! - a request's own tags are recorded beside the fill's taking of the key's lease (the same round trip) and
//!   before it asks the origin: a walk before the recording ran before the origin is asked; a walk after it
//!   finds the key and removes its lease, so the lease is either taken after the removal or gone;
//! - a response's tags are known only from the answer: the fill reads the tag clock before it asks, and
//!   records them, in one step per set, only if the set was not marked after that reading, then stores the
//!   entry under its lease. Marked after the recording, the walk finds the key.
//!
//! A set carries no TTL of its own (its members do), so that a Redis evicting only keys with one (`volatile-*`,
//! the usual policy of managed Redis) never takes it from under entries still stored: a removal by tag would
//! then miss them, and they would be answered for the rest of their lives. Nor does a mark, which such a Redis
//! could otherwise take while a fill it fences is still running. Each recording drops the set's expired members;
//! once an hour (see [`tag_sweep_every`](super::RedisCacheLayerBuilder::tag_sweep_every)) one process of the
//! fleet sweeps the namespace's sets, dropping what expired, the sets left empty and the marks a day old
//! ([`Store::sweep_tags`]). A Redis evicting any key (`allkeys-*`) may still take a set first; see
//! [`RedisStore`](crate::RedisStore).
//!
//! A URI has a tag of its own for the entries its keys alone cannot name (see
//! [`KeyConfig::uri_tag_key`](super::key::KeyConfig::uri_tag_key)): where keys hold request headers
//! (`vary_headers`, credentials in the key, or for one request the headers every key holds) each `GET` and
//! `HEAD` fill records its key there as a request tag, and so does each fill of a query (`QUERY`, a cached
//! `POST`), keyed by its body. A write to the URI walks it, so that every variant and query goes; without a
//! mark, since no answer names a URI's tag. The tag leaves the scheme out: a write in one spelling of the URI
//! (`/p` with `Host: h`, `https://h/p`, `https://h:443/p`) finds the fills of every other.
//!
//! [`CacheHandle::invalidate_tag`]: super::CacheHandle::invalidate_tag
//! [`CacheHandle::invalidate`]: super::CacheHandle::invalidate
//! [`RedisCacheLayerBuilder::tags`]: super::RedisCacheLayerBuilder::tags

use super::decision::RequestFacts;
use super::engine::{Engine, millis};
use super::key::{CacheKey, authority};
use super::stats::add;
use super::store::Store;
use crate::atomic::AtomicU64;
use crate::error::StoreError;
use crate::structured::{Value, field_value, list};
use http::{HeaderMap, HeaderName, Uri, request};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// What a removal does to the entries it finds.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Purge {
    /// Removes them.
    Remove,
    /// Makes them stale as of this unix time in ms, keeping them for their stale windows (a soft purge).
    Stale(u64),
}

/// `Cache-Groups` (RFC 9875 §2): the groups a stored response belongs to.
pub(crate) const CACHE_GROUPS: HeaderName = HeaderName::from_static("cache-groups");

/// `Cache-Group-Invalidation` (RFC 9875 §3): the groups an answer to an unsafe request invalidates.
pub(crate) const CACHE_GROUP_INVALIDATION: HeaderName =
    HeaderName::from_static("cache-group-invalidation");

/// The groups the field `name` of `headers` lists (its lines joined): the Strings of a List, other members
/// ignored (RFC 9875 §2); empty without the field, `None` when it is no List.
fn groups(headers: &HeaderMap, name: &HeaderName) -> Option<Vec<String>> {
    let members = list(&field_value(headers, name)?)?;
    Some(
        members
            .into_iter()
            .filter_map(|member| match member {
                Value::String(group) => Some(group),
                _ => None,
            })
            .collect(),
    )
}

/// Tags a request from its head.
pub(crate) type TagsFn = Arc<dyn Fn(&request::Parts) -> Vec<String> + Send + Sync>;

/// The most tags one request may have: each costs a store call on every fill. A request with more is answered
/// by the origin and not stored.
pub(crate) const MAX_TAGS: usize = 32;

/// How often a process looks whether its fleet's tag sets are due a sweep: at a fill that records tags, at most
/// this often (or as often as the fleet sweeps, if that is more often).
const SWEEP_CHECK_EVERY: Duration = Duration::from_secs(600);
/// How often a fleet sweeps its tag sets by default (see
/// [`tag_sweep_every`](super::RedisCacheLayerBuilder::tag_sweep_every)).
pub(crate) const SWEEP_EVERY: Duration = Duration::from_secs(3600);

/// How often the fleet sweeps, when this process next looks whether the tag sets are due a sweep, and whether it
/// is sweeping now.
#[derive(Debug)]
pub(crate) struct Sweeps {
    /// How often the fleet sweeps: the process that looks first takes a lease for this long. `None`: the layer
    /// never sweeps on its own.
    every: Option<Duration>,
    /// How often this process looks.
    check_every: Duration,
    started: Instant,
    /// Milliseconds after `started`.
    next_at: AtomicU64,
    running: Arc<AtomicBool>,
}

impl Sweeps {
    /// A fleet that sweeps `every` so often (`None`: never on its own); this process looks first once it has
    /// run for as long as it waits between two looks.
    pub(crate) fn new(every: Option<Duration>) -> Self {
        let check_every = every.map_or(SWEEP_CHECK_EVERY, |every| every.min(SWEEP_CHECK_EVERY));
        Sweeps {
            every,
            check_every,
            started: Instant::now(),
            next_at: AtomicU64::new(millis(check_every)),
            running: Arc::default(),
        }
    }
}

/// A sweep running, until dropped (with its task, run or not).
struct Sweeping(Arc<AtomicBool>);

impl Drop for Sweeping {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Sweeps {
    /// This process's turn to look whether the tag sets are due a sweep, with how long the fleet's turn lasts:
    /// at most once every [`SWEEP_CHECK_EVERY`] (or every fleet turn, if shorter), never while its last sweep
    /// runs, and never when the layer does not sweep on its own. The sweep runs until the turn drops.
    fn turn(&self) -> Option<(Sweeping, Duration)> {
        let every = self.every?;
        let now = millis(self.started.elapsed());
        let due = self.next_at.load(Ordering::Relaxed);
        let next = now.saturating_add(millis(self.check_every));
        if now < due
            || self
                .next_at
                .compare_exchange(due, next, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
            || self.running.swap(true, Ordering::AcqRel)
        {
            return None;
        }
        Some((Sweeping(self.running.clone()), every))
    }
}

/// Sweeps the tag sets of the namespace `prefix` if no process of the fleet did for `every`, which the lease at
/// `lease` says: `Some` with how many sets went, `None` when another process's turn holds.
async fn sweep(
    store: &dyn Store,
    prefix: &str,
    lease: &str,
    every: Duration,
) -> Result<Option<u64>, StoreError> {
    let token = format!("{:032x}", rand::random::<u128>());
    if !store.try_lease(lease, &token, every).await? {
        return Ok(None);
    }
    store.sweep_tags(prefix).await.map(Some)
}

/// The tag sets a fill records its key in, and for how long.
#[derive(Debug, Clone)]
pub(crate) struct Tagging {
    /// The keys of the sets.
    pub(crate) sets: Vec<String>,
    /// How long the key stays in them: the longest an entry stored now may live, and a lease's time more
    /// for the origin call.
    pub(crate) lifetime: Duration,
}

/// What a request's tags allow.
pub(crate) enum Tags {
    /// No tags.
    None,
    /// These.
    Some(Tagging),
    /// More than [`MAX_TAGS`]: store nothing for it.
    TooMany,
}

impl Engine {
    /// The tag sets of a request with `parts` and `facts`, for a fill.
    pub(crate) fn tags_of(&self, parts: &request::Parts, facts: &RequestFacts) -> Tags {
        let mut sets = self.tag_sets(parts);
        if sets.len() > MAX_TAGS {
            tracing::warn!(
                tags = sets.len(),
                max = MAX_TAGS,
                "too many cache tags for one request: its answer is not stored"
            );
            return Tags::TooMany;
        }
        if self.policy.uri_tags.record(facts) {
            let partition = self.policy.partition_of(parts);
            sets.push(
                self.keys
                    .uri_tag_key(&parts.uri, &parts.headers, partition.as_deref()),
            );
        }
        if sets.is_empty() {
            return Tags::None;
        }
        let (windows, cap) = (self.policy.longest_windows(facts), self.policy.origin_cap);
        let longest = |own: Duration, origin: Duration| {
            if facts.origin_freshness {
                own.max(origin)
            } else {
                own
            }
        };
        let lifetime = longest(windows.fresh_for(), cap.fresh_for())
            .saturating_add(longest(windows.stale_for(), cap.stale_for()).max(longest(
                windows.stale_if_error_for(),
                cap.stale_if_error_for(),
            )))
            .saturating_add(self.policy.lease_for);
        Tags::Some(Tagging { sets, lifetime })
    }

    /// The keys of the tag sets of a request with `parts`, each once.
    pub(crate) fn tag_sets(&self, parts: &request::Parts) -> Vec<String> {
        let Some(tags) = &self.policy.tags else {
            return Vec::new();
        };
        let mut sets: Vec<String> = tags(parts)
            .iter()
            .map(|tag| self.keys.tag_key(tag))
            .collect();
        sets.sort_unstable();
        sets.dedup();
        sets
    }

    /// The tag sets an answer to a request for `uri` with `headers` names: those its
    /// [`tags_from_header`](super::RedisCacheLayerBuilder::tags_from_header) field lists, and, with
    /// [`cache_groups`](super::RedisCacheLayerBuilder::cache_groups), those of the groups its `Cache-Groups`
    /// field lists (none without either); `Err` when one cannot be read (a byte outside visible ASCII, a
    /// `Cache-Groups` that is no List) or they name more than [`MAX_TAGS`]: then the response is not stored.
    pub(crate) fn response_tag_sets(
        &self,
        headers: &HeaderMap,
        (uri, request): (&Uri, &HeaderMap),
    ) -> Result<Vec<String>, ()> {
        let mut sets = Vec::new();
        if let Some(name) = &self.policy.tags_header {
            for value in headers.get_all(name) {
                let Ok(value) = value.to_str() else {
                    tracing::debug!(header = %name, "unreadable cache tags: the answer is not stored");
                    return Err(());
                };
                sets.extend(
                    value
                        .split(|c: char| c == ',' || c.is_ascii_whitespace())
                        .filter(|tag| !tag.is_empty())
                        .map(|tag| self.keys.tag_key(tag)),
                );
            }
        }
        if self.policy.cache_groups {
            let Some(groups) = groups(headers, &CACHE_GROUPS) else {
                tracing::debug!("unreadable Cache-Groups: the answer is not stored");
                return Err(());
            };
            let origin = authority(uri, request);
            sets.extend(
                groups
                    .iter()
                    .map(|group| self.keys.group_key(origin, group)),
            );
        }
        sets.sort_unstable();
        sets.dedup();
        if sets.len() > MAX_TAGS {
            tracing::warn!(
                tags = sets.len(),
                max = MAX_TAGS,
                "too many cache tags in one response: it is not stored"
            );
            return Err(());
        }
        Ok(sets)
    }

    /// The tag sets of the groups an answer to an unsafe request to `uri` (with `request` headers) invalidates:
    /// those its `Cache-Group-Invalidation` field lists, with
    /// [`cache_groups`](super::RedisCacheLayerBuilder::cache_groups); none when the field is no List.
    pub(crate) fn invalidated_group_sets(
        &self,
        response: &HeaderMap,
        uri: &Uri,
        request: &HeaderMap,
    ) -> Vec<String> {
        if !self.policy.cache_groups {
            return Vec::new();
        }
        let Some(groups) = groups(response, &CACHE_GROUP_INVALIDATION) else {
            tracing::debug!("unreadable Cache-Group-Invalidation: no group invalidated");
            return Vec::new();
        };
        let origin = authority(uri, request);
        groups
            .iter()
            .map(|group| self.keys.group_key(origin, group))
            .collect()
    }

    /// Reads the namespace's tag clock (advancing it for a removal).
    pub(crate) async fn tag_clock(&self, advance: bool, guarded: bool) -> Result<u64, StoreError> {
        let clock = self.keys.tag_clock_key();
        self.store
            .call_as(guarded, "tag-clock", &clock, |s| {
                s.tag_clock(&clock, advance)
            })
            .await
    }

    /// Records `key` in the sets `sets` for `lifetime` (all at once), each unless it was marked invalidated
    /// after the tag clock read `since`: `Ok(true)` when every set took it, `Ok(false)` when one was marked
    /// (the answer may predate a removal: it is not stored), `Err` when a call failed.
    pub(crate) async fn record_tags(
        &self,
        key: &str,
        sets: &[String],
        lifetime: Duration,
        since: u64,
    ) -> Result<bool, ()> {
        self.sweep_if_due();
        let calls = sets.iter().map(|set| {
            self.store
                .call("tag", set, move |s| s.tag(set, key, lifetime, since))
        });
        let mut all = true;
        for result in futures_util::future::join_all(calls).await {
            match result {
                Ok(recorded) => all &= recorded,
                Err(_) => {
                    tracing::debug!(
                        key,
                        "cache tags not recorded (store failing): the answer is not stored"
                    );
                    return Err(());
                }
            }
        }
        Ok(all)
    }

    /// Sweeps the namespace's tag sets on a task of its own if this process has not looked for a while and no
    /// process of the fleet swept them for [`tag_sweep_every`](super::RedisCacheLayerBuilder::tag_sweep_every)
    /// (a lease says which).
    fn sweep_if_due(&self) {
        let Some((turn, every)) = self.sweeps.turn() else {
            return;
        };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (store, _) = self.store.unguarded();
        let prefix = self.keys.namespace_prefix();
        let lease = self.keys.sweep_lease_key();
        let counters = self.counters.clone();
        drop(runtime.spawn(async move {
            let _turn = turn;
            match sweep(&*store, &prefix, &lease, every).await {
                Ok(Some(removed)) => {
                    add(&counters.tag_sets_swept, removed);
                    tracing::debug!(removed, "cache tags: swept the tag sets");
                }
                // Another process swept within its turn.
                Ok(None) => {}
                Err(error) => tracing::debug!(%error, "cache tags: the sweep of tag sets failed"),
            }
        }));
    }

    /// Removes every entry recorded in the tag sets `sets`, each lease before its entry, from this process's
    /// near cache and in-flight calls too; returns how many entries existed. Through the store's breaker and
    /// timeout when `guarded`, else straight (a caller's own call).
    pub(crate) async fn remove_tagged(
        &self,
        sets: &[String],
        guarded: bool,
    ) -> Result<u64, StoreError> {
        self.purge_tagged(sets, guarded, Purge::Remove).await
    }

    /// [`remove_tagged`](Self::remove_tagged), or with [`Purge::Stale`] the same with the entries made stale
    /// instead (their leases still go, and the sets are marked, so that no fill from before stores after).
    pub(crate) async fn purge_tagged(
        &self,
        sets: &[String],
        guarded: bool,
        purge: Purge,
    ) -> Result<u64, StoreError> {
        self.remove_sets(sets, true, guarded, purge).await
    }

    /// [`purge_tagged`](Self::purge_tagged) for URI tag sets (see [`KeyConfig::uri_tag_key`]), without the
    /// marks: only fills record keys there, before they ask the origin, never an answer's tags.
    ///
    /// [`KeyConfig::uri_tag_key`]: super::key::KeyConfig::uri_tag_key
    pub(crate) async fn purge_uri_tagged(
        &self,
        sets: &[String],
        guarded: bool,
        purge: Purge,
    ) -> Result<u64, StoreError> {
        self.remove_sets(sets, false, guarded, purge).await
    }

    /// Removes (or makes stale, as `purge` says) what each of `sets` names, each set marked first when `mark`.
    async fn remove_sets(
        &self,
        sets: &[String],
        mark: bool,
        guarded: bool,
        purge: Purge,
    ) -> Result<u64, StoreError> {
        let mut removed = 0;
        for set in sets {
            if mark {
                // Marked first: a fill that read the clock before this and learns its tags from its answer
                // then does not record (or store) it; one that recorded before the mark is in the walk.
                let at = self.tag_clock(true, guarded).await?;
                self.store
                    .call_as(guarded, "tag-mark", set, |s| s.mark_invalidated(set, at))
                    .await?;
                // Which call in flight here will answer with this tag is not known yet: callers arriving from
                // now on make their own rather than share one that may predate the removal.
                if self.policy.answer_tags() {
                    self.flights.detach_all();
                }
            }
            removed += self.remove_members(set, guarded, purge).await?;
        }
        Ok(removed)
    }

    /// Walks the tag set `set` and removes (or makes stale) every entry it names, each lease before its entry.
    async fn remove_members(
        &self,
        set: &str,
        guarded: bool,
        purge: Purge,
    ) -> Result<u64, StoreError> {
        let prefix = self.keys.namespace_prefix();
        let mut removed = 0;
        let mut cursor = 0;
        loop {
            let (members, next) = self
                .store
                .call_as(guarded, "tagged", set, |s| s.tagged(set, cursor))
                .await?;
            // Only this namespace's entry keys: a set holds nothing else, and a removal never trusts it to.
            let keys: Vec<CacheKey> = members
                .iter()
                .filter_map(|member| CacheKey::parse(&prefix, member))
                .collect();
            let page = self.purge_entries(&keys, guarded, purge).await?;
            if let Purge::Remove = purge {
                add(&self.counters.tag_removals, page);
            }
            removed += page;
            if next == 0 {
                return Ok(removed);
            }
            cursor = next;
        }
    }

    /// Removes the leases of `keys`, then their entries (one call each; one key a command on a Cluster), after
    /// dropping their near copies; callers of this process arriving afterwards do not share a call that began
    /// before. Returns how many entries existed.
    pub(crate) async fn remove_entries(
        &self,
        keys: &[CacheKey],
        guarded: bool,
    ) -> Result<u64, StoreError> {
        self.purge_entries(keys, guarded, Purge::Remove).await
    }

    /// [`remove_entries`](Self::remove_entries), or with [`Purge::Stale`] the same with the entries made stale
    /// instead of removed ([`Store::mark_stale`]): returns how many were fresh.
    pub(crate) async fn purge_entries(
        &self,
        keys: &[CacheKey],
        guarded: bool,
        purge: Purge,
    ) -> Result<u64, StoreError> {
        let Some(first) = keys.first() else {
            return Ok(0);
        };
        for key in keys {
            self.forget(key);
        }
        let leases: Vec<String> = keys.iter().map(CacheKey::lease_key).collect();
        let leases: Vec<&str> = leases.iter().map(String::as_str).collect();
        let entries: Vec<&str> = keys.iter().map(CacheKey::as_str).collect();
        let outcome = async {
            self.store
                .call_as(guarded, "invalidate", first.as_str(), |s| s.remove(&leases))
                .await?;
            self.store
                .call_as(guarded, "invalidate", first.as_str(), |s| match purge {
                    Purge::Remove => s.remove(&entries),
                    Purge::Stale(at) => s.mark_stale(&entries, at),
                })
                .await
        }
        .await;
        for key in keys {
            self.flights.detach(key.as_str());
        }
        if let (Purge::Stale(_), Ok(marked)) = (purge, &outcome) {
            add(&self.counters.marked_stale, *marked);
        }
        outcome
    }
}

#[cfg(all(test, feature = "memory"))]
mod tests {
    use super::*;
    use crate::MemoryStore;

    #[tokio::test]
    async fn a_process_looks_once_a_while_and_one_of_a_fleet_sweeps_per_turn() {
        let sweeps = Sweeps::new(Some(SWEEP_EVERY));
        assert!(sweeps.turn().is_none(), "not due as the layer starts");
        sweeps.next_at.store(0, Ordering::Relaxed);
        let (turn, every) = sweeps.turn().expect("due");
        assert_eq!(every, SWEEP_EVERY);
        sweeps.next_at.store(0, Ordering::Relaxed);
        assert!(sweeps.turn().is_none(), "the last sweep still runs");
        drop(turn);
        sweeps.next_at.store(0, Ordering::Relaxed);
        assert!(sweeps.turn().is_some(), "due, and the last sweep ended");
        assert!(sweeps.turn().is_none(), "looked just now");
        // Looking every ten minutes, or as often as the fleet sweeps if that is more often.
        assert_eq!(sweeps.next_at.load(Ordering::Relaxed) / 1000, 600);
        let often = Sweeps::new(Some(Duration::from_secs(60)));
        assert_eq!(often.next_at.load(Ordering::Relaxed), 60_000);
        // Sweeps turned off: never a turn.
        let off = Sweeps::new(None);
        off.next_at.store(0, Ordering::Relaxed);
        assert!(off.turn().is_none(), "the layer does not sweep on its own");

        // Two processes over one store: the first to look sweeps, the other finds the fleet's turn taken.
        let store = MemoryStore::new(1 << 20);
        let (prefix, lease) = ("ns:v1:", "ns:v1:tag-sweep");
        assert_eq!(
            sweep(&store, prefix, lease, SWEEP_EVERY).await.unwrap(),
            Some(0)
        );
        assert_eq!(
            sweep(&store, prefix, lease, SWEEP_EVERY).await.unwrap(),
            None
        );
        assert!(store.get(lease).await.unwrap().is_some());
    }
}
