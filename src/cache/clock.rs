//! The cache's clock: unix milliseconds that move with Tokio's clock, so tests pause and advance it, and that
//! follow the store's clock where this process's own is off by more than a second.
//!
//! An entry's windows are unix times, written by one process and read by every other. Were each process to read
//! its own clock, one whose clock runs a minute behind would store entries that look a minute older everywhere
//! else (stale or gone before their time), and one running ahead, entries that stay fresh too long. So a clock
//! made with [`Clock::following`] asks the store for its time (`TIME` on Redis) when it is made (on a runtime;
//! else at its first reading) and then at most once a minute, on a task of its own, and reads the store's time
//! from then on where the two differ by more than [`TOLERANCE_MS`]: every process of a fleet then times entries
//! by one clock, whatever its own says. Within that tolerance (clocks kept by NTP, or a test's processes on one
//! machine) nothing changes.

use super::deadline::Deadlines;
use super::stats::Counters;
use super::store::Store;
use crate::atomic::{AtomicI64, AtomicU64};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

/// Unix time in milliseconds for freshness: the wall clock read when the clock was made, plus the time Tokio
/// has seen pass since (paused and advanced in tests, like every other timer of the crate), plus how far the
/// store's clock runs ahead of this process's wall clock when that is more than [`TOLERANCE_MS`].
///
/// If the wall clock runs more than a second ahead of that sum (the monotonic clock stands still while a
/// machine is suspended), the clock catches up with it, so entries are never judged younger than they are.
#[derive(Debug)]
pub(crate) struct Clock {
    wall_at_start: AtomicU64,
    start: Instant,
    /// The elapsed milliseconds at which the wall clock is next read: once a second is enough to notice a
    /// suspend, and a read on every call would be a second clock read on every hit.
    next_wall_check: AtomicU64,
    /// Milliseconds added to the reading to give the store's time: 0 while the two agree within
    /// [`TOLERANCE_MS`].
    shift_ms: AtomicI64,
    /// What the clock is kept in step with, if anything.
    follow: Option<Follow>,
}

/// How far the wall clock may run ahead before the clock catches up, and how often it is looked at.
const CATCH_UP_MS: u64 = 1000;

/// How far the store's clock may be from this process's before the cache reads the store's instead. Below it, a
/// reading is left as it is: the measure is only as exact as half a round trip, and a second is nothing against
/// windows of seconds and more (`Age` counts whole seconds).
const TOLERANCE_MS: i64 = 1_000;

/// How often the store's clock is read again.
const FOLLOW_EVERY_MS: u64 = 60_000;

/// A reading of the store's clock whose round trip took longer than this is not used: it says too little.
const MAX_ROUND_TRIP: Duration = Duration::from_millis(250);

/// Marks [`Follow::ahead_ms`] before the first measure.
const NOT_MEASURED: i64 = i64::MIN;

/// The store a clock follows, and the state of its readings.
struct Follow {
    /// The clock itself, for the task that reads the store's.
    clock: Weak<Clock>,
    store: Arc<dyn Store>,
    /// The store calls' deadlines: a reading waits no longer than any other store call.
    deadlines: Arc<Deadlines>,
    /// The elapsed milliseconds at which the store's clock is next read; `u64::MAX` for a store without one.
    next_at: AtomicU64,
    /// Whether a reading is under way.
    reading: AtomicBool,
    /// How many milliseconds the store's clock ran ahead of the wall clock at the last good reading (negative:
    /// behind), or [`NOT_MEASURED`].
    ahead_ms: AtomicI64,
    /// The layer's counters, for the namespace its gauge is exported under.
    #[cfg(feature = "metrics")]
    counters: Arc<Counters>,
}

impl std::fmt::Debug for Follow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follow")
            .field("ahead_ms", &self.ahead_ms.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Clock {
    /// This process's clock alone.
    #[cfg(test)]
    pub(crate) fn new() -> Self {
        Clock::with(None)
    }

    /// A clock that follows `store`'s where the two differ by more than [`TOLERANCE_MS`], reading it with
    /// `deadlines` bounding each reading, and exporting each reading under `counters`' namespace.
    pub(crate) fn following(
        store: Arc<dyn Store>,
        deadlines: Arc<Deadlines>,
        counters: Arc<Counters>,
    ) -> Arc<Self> {
        #[cfg(not(feature = "metrics"))]
        let _ = counters;
        let clock = Arc::new_cyclic(|clock| {
            Clock::with(Some(Follow {
                clock: clock.clone(),
                store,
                deadlines,
                next_at: AtomicU64::new(0),
                reading: AtomicBool::new(false),
                ahead_ms: AtomicI64::new(NOT_MEASURED),
                #[cfg(feature = "metrics")]
                counters,
            }))
        });
        // Read at once when made on a runtime (a layer built in `main`), so that the first request already
        // finds the store's clock read; otherwise at the first reading.
        if let Some(follow) = &clock.follow {
            follow.maybe_read(0);
        }
        clock
    }

    fn with(follow: Option<Follow>) -> Self {
        Clock {
            wall_at_start: AtomicU64::new(wall_ms()),
            start: Instant::now(),
            // A clock that follows a store looks at once, to read the store's clock before the first entry.
            next_wall_check: AtomicU64::new(if follow.is_some() { 0 } else { CATCH_UP_MS }),
            shift_ms: AtomicI64::new(0),
            follow,
        }
    }

    /// Now, in unix milliseconds.
    pub(crate) fn now_ms(&self) -> u64 {
        let elapsed = millis(self.start.elapsed());
        if elapsed < self.next_wall_check.load(Ordering::Relaxed) {
            return self.shifted(elapsed);
        }
        self.look_again(elapsed)
    }

    /// The reading at `elapsed`, in the store's time where it differs.
    fn shifted(&self, elapsed: u64) -> u64 {
        self.wall_at_start
            .load(Ordering::Relaxed)
            .saturating_add(elapsed)
            .saturating_add_signed(self.shift_ms.load(Ordering::Relaxed))
    }

    /// The once-a-second look at the wall clock, and the store's when a reading of it is due. Out of line: a hit
    /// takes it once a second at most.
    #[cold]
    #[inline(never)]
    fn look_again(&self, elapsed: u64) -> u64 {
        self.next_wall_check
            .store(elapsed.saturating_add(CATCH_UP_MS), Ordering::Relaxed);
        let wall = wall_ms();
        let now = self
            .wall_at_start
            .load(Ordering::Relaxed)
            .saturating_add(elapsed);
        if wall > now.saturating_add(CATCH_UP_MS) {
            self.wall_at_start
                .store(wall.saturating_sub(elapsed), Ordering::Relaxed);
        }
        if let Some(follow) = &self.follow {
            follow.maybe_read(elapsed);
        }
        self.shifted(elapsed)
    }

    /// How many milliseconds the store's clock ran ahead of this process's at the last reading (negative:
    /// behind); `None` before one, or when the clock follows none.
    pub(crate) fn store_ahead_ms(&self) -> Option<i64> {
        let ahead = self.follow.as_ref()?.ahead_ms.load(Ordering::Relaxed);
        (ahead != NOT_MEASURED).then_some(ahead)
    }
}

impl Follow {
    /// Starts a reading of the store's clock on a task of its own when one is due and none is under way (and
    /// there is a runtime to run it).
    fn maybe_read(&self, elapsed: u64) {
        if elapsed < self.next_at.load(Ordering::Relaxed)
            || self.reading.swap(true, Ordering::Acquire)
        {
            return;
        }
        let (Some(clock), Ok(runtime)) =
            (self.clock.upgrade(), tokio::runtime::Handle::try_current())
        else {
            self.reading.store(false, Ordering::Release);
            return;
        };
        self.next_at
            .store(elapsed.saturating_add(FOLLOW_EVERY_MS), Ordering::Relaxed);
        drop(runtime.spawn(read_store_clock(Reading(clock))));
    }
}

/// Reads the store's clock once and shifts the reading's clock by how far it is from this process's wall clock,
/// if more than [`TOLERANCE_MS`]. A failed or slow reading changes nothing; a store without a clock is not asked
/// again.
async fn read_store_clock(reading: Reading) {
    let clock = &reading.0;
    let Some(follow) = &clock.follow else { return };
    let before = SystemTime::now();
    let answer = follow.deadlines.bound(follow.store.server_time()).await;
    let after = SystemTime::now();
    let server = match answer {
        Ok(Ok(Some(server))) => server,
        Ok(Ok(None)) => {
            follow.next_at.store(u64::MAX, Ordering::Relaxed);
            return;
        }
        Ok(Err(error)) => {
            tracing::debug!(%error, "cache store's clock could not be read");
            return;
        }
        Err(_) => {
            tracing::debug!("cache store's clock did not answer within the store timeout");
            return;
        }
    };
    let Some(ahead) = ahead_ms(before, server, after) else {
        return;
    };
    #[cfg(feature = "metrics")]
    super::stats::record_store_clock(&follow.counters, ahead);
    follow.ahead_ms.store(ahead, Ordering::Relaxed);
    let shift = if ahead.abs() > TOLERANCE_MS { ahead } else { 0 };
    let before_shift = clock.shift_ms.swap(shift, Ordering::Relaxed);
    if shift != 0
        && (before_shift == 0 || shift.abs_diff(before_shift) > TOLERANCE_MS.unsigned_abs())
    {
        tracing::warn!(
            store_ahead_ms = ahead,
            "this process's clock is {:.1} s {} the cache store's: entries are timed by the store's clock",
            ahead.unsigned_abs() as f64 / 1000.0,
            if ahead > 0 { "behind" } else { "ahead of" },
        );
    } else if shift == 0 && before_shift != 0 {
        tracing::info!(
            store_ahead_ms = ahead,
            "this process's clock agrees with the cache store's again"
        );
    }
}

/// A reading of the store's clock under way, for its clock: the next may start once it is dropped, however
/// the reading ends (its task dropped unfinished, or never run, with a runtime that shuts down, too).
struct Reading(Arc<Clock>);

impl Drop for Reading {
    fn drop(&mut self) {
        if let Some(follow) = &self.0.follow {
            follow.reading.store(false, Ordering::Release);
        }
    }
}

/// How many milliseconds `server` is ahead of the wall clock, read as `before` and `after` it (negative:
/// behind), measured from the middle of the round trip; `None` for a round trip too long (or a wall clock
/// that stepped back) to say.
fn ahead_ms(before: SystemTime, server: SystemTime, after: SystemTime) -> Option<i64> {
    let round_trip = after.duration_since(before).ok()?;
    if round_trip > MAX_ROUND_TRIP {
        return None;
    }
    let middle = before.checked_add(round_trip / 2)?;
    Some(match server.duration_since(middle) {
        Ok(ahead) => i64::try_from(ahead.as_millis()).unwrap_or(i64::MAX),
        Err(behind) => i64::try_from(behind.duration().as_millis()).map_or(i64::MIN + 1, |ms| -ms),
    })
}

/// Whole milliseconds, saturating, without the 128-bit division `as_millis` costs.
fn millis(d: Duration) -> u64 {
    d.as_secs()
        .saturating_mul(1000)
        .saturating_add(u64::from(d.subsec_millis()))
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_is_measured_from_the_middle_of_the_round_trip() {
        let at = |ms: u64| UNIX_EPOCH + Duration::from_millis(1_796_339_077_000 + ms);
        // Asked at 0, answered at 200: the store read its clock at about 100.
        assert_eq!(ahead_ms(at(0), at(120_100), at(200)), Some(120_000));
        assert_eq!(ahead_ms(at(0), at(100), at(200)), Some(0));
        assert_eq!(ahead_ms(at(120_000), at(100), at(120_200)), Some(-120_000));
        assert_eq!(ahead_ms(at(10), at(0), at(10)), Some(-10));
        // A round trip too long to say much, or a wall clock that stepped back meanwhile.
        assert_eq!(ahead_ms(at(0), at(100), at(251)), None);
        assert_eq!(ahead_ms(at(200), at(100), at(0)), None);
        // A store clock at the epoch, or far in the future, saturates rather than wraps.
        assert_eq!(ahead_ms(at(0), UNIX_EPOCH, at(0)), Some(-1_796_339_077_000));
        assert!(
            ahead_ms(
                UNIX_EPOCH,
                UNIX_EPOCH + Duration::from_secs(u64::MAX / 4),
                UNIX_EPOCH
            )
            .is_some()
        );
    }

    use crate::cache::store::StoreFuture;

    /// A store that never answers.
    struct Silent;

    impl Store for Silent {
        fn get<'a>(&'a self, _: &'a str) -> StoreFuture<'a, Option<bytes::Bytes>> {
            Box::pin(std::future::pending())
        }
        fn set<'a>(&'a self, _: &'a str, _: bytes::Bytes, _: Duration) -> StoreFuture<'a, ()> {
            Box::pin(std::future::pending())
        }
        fn try_lease<'a>(&'a self, _: &'a str, _: &'a str, _: Duration) -> StoreFuture<'a, bool> {
            Box::pin(std::future::pending())
        }
        fn extend_lease<'a>(
            &'a self,
            _: &'a str,
            _: &'a str,
            _: Duration,
        ) -> StoreFuture<'a, bool> {
            Box::pin(std::future::pending())
        }
        fn release_lease<'a>(&'a self, _: &'a str, _: &'a str) -> StoreFuture<'a, bool> {
            Box::pin(std::future::pending())
        }
        fn remove<'a>(&'a self, _: &'a [&'a str]) -> StoreFuture<'a, u64> {
            Box::pin(std::future::pending())
        }
        fn purge_prefix<'a>(&'a self, _: &'a str) -> StoreFuture<'a, u64> {
            Box::pin(std::future::pending())
        }
        fn server_time(&self) -> StoreFuture<'_, Option<SystemTime>> {
            Box::pin(std::future::pending())
        }
    }

    #[test]
    fn a_clock_made_on_a_runtime_reads_at_once_and_a_reading_dropped_with_it_lets_the_next_start() {
        let counters = || Arc::new(Counters::new("clock"));
        let deadlines = || Deadlines::new(Duration::from_secs(3600));
        // Made outside a runtime: nothing to read on until the first reading.
        let clock = Clock::following(Arc::new(Silent), deadlines(), counters());
        let follow = clock.follow.as_ref().unwrap();
        assert!(!follow.reading.load(Ordering::Relaxed));
        for polled in [false, true] {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let clock = runtime.block_on(async {
                let clock = Clock::following(Arc::new(Silent), deadlines(), counters());
                if polled {
                    tokio::task::yield_now().await;
                }
                clock
            });
            let follow = clock.follow.as_ref().unwrap();
            assert!(follow.reading.load(Ordering::Relaxed), "read at once");
            // The runtime goes, and the reading with it, started or not: the next may start.
            drop(runtime);
            assert!(!follow.reading.load(Ordering::Relaxed), "polled: {polled}");
        }
    }

    #[cfg(feature = "memory")]
    #[tokio::test(start_paused = true)]
    async fn a_store_without_a_clock_is_asked_once_and_shifts_nothing() {
        let store: Arc<dyn Store> = Arc::new(crate::MemoryStore::new(1 << 20));
        let counters = Arc::new(Counters::new("clock"));
        let clock = Clock::following(store, Deadlines::new(Duration::from_millis(50)), counters);
        let follow = clock.follow.as_ref().unwrap();
        let before = clock.now_ms();
        for _ in 0..100 {
            if follow.next_at.load(Ordering::Relaxed) == u64::MAX {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(
            follow.next_at.load(Ordering::Relaxed),
            u64::MAX,
            "not asked again"
        );
        assert_eq!(clock.store_ahead_ms(), None);
        tokio::time::advance(Duration::from_secs(3600)).await;
        let after = clock.now_ms();
        assert!(
            after.abs_diff(before + 3_600_000) < 1_000,
            "{before} -> {after}"
        );
        assert!(!follow.reading.load(Ordering::Relaxed));
    }

    #[tokio::test(start_paused = true)]
    async fn follows_paused_tokio_time() {
        let clock = Clock::new();
        let before = clock.now_ms();
        tokio::time::advance(Duration::from_secs(3600)).await;
        let after = clock.now_ms();
        assert!(after >= before + 3_600_000, "{before} -> {after}");
        assert!(after < before + 3_610_000, "{before} -> {after}");
    }
}
