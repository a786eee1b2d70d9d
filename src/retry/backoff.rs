//! Exponential backoff with full jitter.

use rand::RngExt;
use std::time::Duration;

/// Exponential backoff with full jitter: the delay before retry `n` (0-based) is drawn uniformly from
/// `[0, min(max, base * 2^n)]`, as in "Exponential Backoff And Jitter" (AWS Architecture Blog, 2015).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backoff {
    pub(crate) base: Duration,
    pub(crate) max: Duration,
}

impl Backoff {
    /// The largest delay retry `n` may draw: `min(max, base * 2^n)`, without overflow.
    pub(crate) fn ceiling(&self, retry: u32) -> Duration {
        let factor = 1u32.checked_shl(retry).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// A delay for retry `n`, drawn from `rng`.
    pub(crate) fn delay(&self, retry: u32, rng: &mut impl rand::Rng) -> Duration {
        let ceiling = u64::try_from(self.ceiling(retry).as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.random_range(0..=ceiling))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    #[test]
    fn ceiling_doubles_then_caps_without_overflow() {
        let backoff = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(5),
        };
        assert_eq!(backoff.ceiling(0), Duration::from_millis(100));
        assert_eq!(backoff.ceiling(1), Duration::from_millis(200));
        assert_eq!(backoff.ceiling(5), Duration::from_millis(3200));
        assert_eq!(backoff.ceiling(6), Duration::from_secs(5));
        assert_eq!(backoff.ceiling(u32::MAX), Duration::from_secs(5));
    }

    proptest! {
        #[test]
        fn delays_stay_within_full_jitter_bounds(seed: u64, retry in 0u32..40, base_ms in 1u64..2_000, max_ms in 1u64..120_000) {
            let backoff = Backoff { base: Duration::from_millis(base_ms), max: Duration::from_millis(max_ms) };
            let mut rng = SmallRng::seed_from_u64(seed);
            let delay = backoff.delay(retry, &mut rng);
            let ceiling = Duration::from_millis(max_ms.min(base_ms.saturating_mul(1u64.checked_shl(retry).unwrap_or(u64::MAX))));
            prop_assert!(delay <= ceiling, "{delay:?} > {ceiling:?}");
        }

    }
}
