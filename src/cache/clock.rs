//! The cache's clock: unix milliseconds that move with Tokio's clock, so tests pause and advance it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};
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
}

/// How far the wall clock may run ahead before the clock catches up.
const CATCH_UP_MS: u64 = 1000;

impl Clock {
    pub(crate) fn new() -> Self {
        Clock {
            wall_at_start: AtomicU64::new(wall_ms()),
            start: Instant::now(),
        }
    }

    /// Now, in unix milliseconds.
    pub(crate) fn now_ms(&self) -> u64 {
        let elapsed = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        let now = self
            .wall_at_start
            .load(Ordering::Relaxed)
            .saturating_add(elapsed);
        let wall = wall_ms();
        if wall > now.saturating_add(CATCH_UP_MS) {
            self.wall_at_start
                .store(wall.saturating_sub(elapsed), Ordering::Relaxed);
            return wall;
        }
        now
    }
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
