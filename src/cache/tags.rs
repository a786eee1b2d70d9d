//! Tags: sets of entries removed together, by [`CacheHandle::invalidate_tag`] or by an unsafe request with
//! one of their tags (see [`RedisCacheLayerBuilder::tags`]).
//!
//! A tag's set (`<namespace>:v1:tag:{<digest>}`, a sorted set on Redis) holds the keys of the entries stored
//! with it, each until its entry's longest possible life. A fill records its key in the sets of its tags while
//! it holds the key's lease and before it asks the origin. A removal walks the set and, for each key, removes
//! the lease and then the entry, as [`CacheHandle::invalidate`] does. So a fill whose origin call may have
//! begun before the removal is found by it (its key was recorded first) and cannot store its answer after it
//! (its lease is gone); a fill recorded after the removal's walk asked the origin after the removal began.
//!
//! [`CacheHandle::invalidate_tag`]: super::CacheHandle::invalidate_tag
//! [`CacheHandle::invalidate`]: super::CacheHandle::invalidate
//! [`RedisCacheLayerBuilder::tags`]: super::RedisCacheLayerBuilder::tags

use super::decision::RequestFacts;
use super::engine::Engine;
use super::key::CacheKey;
use super::stats::add;
use crate::error::StoreError;
use http::request;
use std::sync::Arc;
use std::time::Duration;

/// Tags a request from its head.
pub(crate) type TagsFn = Arc<dyn Fn(&request::Parts) -> Vec<String> + Send + Sync>;

/// The most tags one request may have: each costs a store call on every fill. A request with more is answered
/// by the origin and not stored.
pub(crate) const MAX_TAGS: usize = 32;

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
        let sets = self.tag_sets(parts);
        if sets.is_empty() {
            return Tags::None;
        }
        if sets.len() > MAX_TAGS {
            tracing::warn!(
                tags = sets.len(),
                max = MAX_TAGS,
                "too many cache tags for one request: its answer is not stored"
            );
            return Tags::TooMany;
        }
        let (windows, cap) = (facts.windows, self.policy.origin_cap);
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

    /// Records `key` in the sets of `tagging` for `lifetime` (all at once); `Err` if any call failed.
    pub(crate) async fn record_tags(
        &self,
        key: &str,
        sets: &[String],
        lifetime: Duration,
    ) -> Result<(), ()> {
        let calls = sets.iter().map(|set| {
            self.store
                .call("tag", set, move |s| s.tag(set, key, lifetime))
        });
        let results = futures_util::future::join_all(calls).await;
        if results.iter().all(Result::is_ok) {
            Ok(())
        } else {
            tracing::debug!(
                key,
                "cache tags not recorded (store failing): the answer is not stored"
            );
            Err(())
        }
    }

    /// Removes every entry recorded in the tag sets `sets`, each lease before its entry, from this process's
    /// near cache and in-flight calls too; returns how many entries existed. Through the store's breaker and
    /// timeout when `guarded`, else straight (a caller's own call).
    pub(crate) async fn remove_tagged(
        &self,
        sets: &[String],
        guarded: bool,
    ) -> Result<u64, StoreError> {
        let prefix = self.keys.namespace_prefix();
        let mut removed = 0;
        for set in sets {
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
                removed += self.remove_entries(&keys, guarded).await?;
                if next == 0 {
                    break;
                }
                cursor = next;
            }
        }
        add(&self.counters.tag_removals, removed);
        Ok(removed)
    }

    /// Removes the leases of `keys`, then their entries (one call each; one key a command on a Cluster), after
    /// dropping their near copies; callers of this process arriving afterwards do not share a call that began
    /// before. Returns how many entries existed.
    pub(crate) async fn remove_entries(
        &self,
        keys: &[CacheKey],
        guarded: bool,
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
                .call_as(guarded, "invalidate", first.as_str(), |s| {
                    s.remove(&entries)
                })
                .await
        }
        .await;
        for key in keys {
            self.flights.detach(key.as_str());
        }
        outcome
    }
}
