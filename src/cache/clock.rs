//! The cache's clock: unix milliseconds that move with Tokio's clock, so tests pause and advance it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;

/// Unix time in milliseconds for freshness: the wall clock read when the clock was made, plus the time Tokio
/// has seen pass since (paused and advanced in tests, like every other timer of the crate).
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
}

/// How far the wall clock may run ahead before the clock catches up, and how often it is looked at.
const CATCH_UP_MS: u64 = 1000;

impl Clock {
    pub(crate) fn new() -> Self {
        Clock {
            wall_at_start: AtomicU64::new(wall_ms()),
            start: Instant::now(),
            next_wall_check: AtomicU64::new(CATCH_UP_MS),
        }
    }

    /// Now, in unix milliseconds.
    pub(crate) fn now_ms(&self) -> u64 {
        let elapsed = millis(self.start.elapsed());
        let now = self
            .wall_at_start
            .load(Ordering::Relaxed)
            .saturating_add(elapsed);
        if elapsed < self.next_wall_check.load(Ordering::Relaxed) {
            return now;
        }
        self.next_wall_check
            .store(elapsed.saturating_add(CATCH_UP_MS), Ordering::Relaxed);
        let wall = wall_ms();
        if wall > now.saturating_add(CATCH_UP_MS) {
            self.wall_at_start
                .store(wall.saturating_sub(elapsed), Ordering::Relaxed);
            return wall;
        }
        now
    }
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
