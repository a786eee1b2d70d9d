//! The near cache without the `redis` feature: there is none. Only a Redis store tracks keys, so nothing
//! implements [`Tracking`] here and a [`Near`] cannot be made; the engine's calls compile and never run.

use super::clock::Clock;
use super::entry::Entry;
use super::heads::Renders;
use super::stats::Counters;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

/// The tracking side of a store; no store has one without the `redis` feature.
pub(crate) trait Tracking: Send + Sync + 'static {
    /// Proof that a value of this type exists, which none does.
    fn never(&self) -> Infallible;
}

/// Why the near cache was emptied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FlushCause {
    /// This process purged its namespace.
    Local,
}

/// A read that may fill the near cache; never made.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Fill {}

/// A watched lease; never made.
pub(crate) struct LeaseWatch<'a>(Infallible, std::marker::PhantomData<&'a Near>);

impl LeaseWatch<'_> {
    pub(crate) async fn pushed(&self) {
        match self.0 {}
    }
}

/// The near cache; never made.
#[derive(Debug)]
pub(crate) enum Near {}

impl Near {
    pub(crate) fn new(
        _prefix: String,
        _max_bytes: u64,
        _max_ttl: Duration,
        tracking: Arc<dyn Tracking>,
        _counters: Arc<Counters>,
        _clock: Arc<Clock>,
    ) -> Self {
        match tracking.never() {}
    }

    pub(crate) fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        match *self {}
    }

    pub(crate) fn start(self: &Arc<Self>) {
        match **self {}
    }

    pub(crate) fn with_entry<T>(
        &self,
        _key: &[u8; 32],
        _now: u64,
        _answer: impl FnOnce(&Entry, Renders<'_>) -> Option<T>,
    ) -> Option<T> {
        match *self {}
    }

    pub(crate) fn usage(&self) -> (u64, u64) {
        match *self {}
    }

    pub(crate) fn begin_fill(&self, _key: &[u8; 32], _now: u64) -> Option<Fill> {
        match *self {}
    }

    pub(crate) fn complete_fill(&self, _key: &[u8; 32], fill: Fill, _entry: &Entry, _now: u64) {
        match fill {}
    }

    pub(crate) fn abandon_fill(&self, _key: &[u8; 32], fill: Fill) {
        match fill {}
    }

    pub(crate) fn remove(&self, _key: &[u8; 32]) {
        match *self {}
    }

    pub(crate) fn flush(&self, _cause: FlushCause) {
        match *self {}
    }

    pub(crate) fn watch_lease(&self, _key: &str) -> LeaseWatch<'_> {
        match *self {}
    }

    pub(crate) fn answering(&self) -> bool {
        match *self {}
    }

    pub(crate) fn marks(&self) -> u64 {
        match *self {}
    }
}
