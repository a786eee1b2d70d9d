//! [`RetryBudget`]: a token bucket that keeps retries from multiplying load during an outage.

use crate::atomic::AtomicU64;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Tokens are kept in thousandths so refunds can be fractions without floating-point state.
const MILLI: u64 = 1000;

/// A retry budget shared by every service a [`RetryLayer`](super::RetryLayer) builds (and their clones).
///
/// The bucket starts full. Each retry takes one token; a retry that finds less than one token left is not
/// made, and the caller gets the last answer with [`GaveUp::Budget`](super::GaveUp::Budget). Each attempt that
/// ends the request without needing a retry (a success, or an answer the classifier calls final) puts
/// `refund` tokens back, up to the capacity. Under a sustained outage retries therefore stop after `capacity`
/// of them, and afterwards run at no more than `refund` retries per completed request: retries cannot
/// multiply the load on a struggling API.
///
/// # Example
///
/// ```
/// use tower_redis_cache::retry::{RetryBudget, RetryLayer};
///
/// // At most 10 retries in a burst, then one per 10 completed requests.
/// let budget = RetryBudget::new(10, 0.1);
/// let layer = RetryLayer::builder().budget(budget.clone()).build()?;
/// assert_eq!(budget.available(), 10.0);
/// # Ok::<(), tower_redis_cache::error::ConfigError>(())
/// ```
#[derive(Clone)]
pub struct RetryBudget {
    bucket: Arc<Bucket>,
}

struct Bucket {
    tokens: AtomicU64,
    capacity: u64,
    refund: u64,
}

impl RetryBudget {
    /// A bucket holding `capacity` retries, refilled by `refund` tokens per request that completes without a
    /// retry. `refund` is clamped to `0.0..=capacity`; a non-finite value counts as `0.0`.
    pub fn new(capacity: u32, refund: f64) -> Self {
        let capacity = u64::from(capacity) * MILLI;
        let refund = if refund.is_finite() && refund > 0.0 {
            ((refund * MILLI as f64).round() as u64).min(capacity)
        } else {
            0
        };
        RetryBudget {
            bucket: Arc::new(Bucket {
                tokens: AtomicU64::new(capacity),
                capacity,
                refund,
            }),
        }
    }

    /// The retries currently available (fractional while refunds accumulate).
    pub fn available(&self) -> f64 {
        self.bucket.tokens.load(Ordering::Relaxed) as f64 / MILLI as f64
    }

    /// Takes one retry's token; `false` when less than one is left.
    pub(crate) fn try_withdraw(&self) -> bool {
        self.bucket
            .tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                t.checked_sub(MILLI)
            })
            .is_ok()
    }

    /// Returns the refund for a request that completed without a retry.
    pub(crate) fn deposit(&self) {
        let bucket = &*self.bucket;
        if bucket.refund == 0 {
            return;
        }
        let _ = bucket
            .tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                (t < bucket.capacity).then(|| (t + bucket.refund).min(bucket.capacity))
            });
    }
}

impl Default for RetryBudget {
    /// 20 retries in a burst, then one per five completed requests (`RetryBudget::new(20, 0.2)`).
    fn default() -> Self {
        RetryBudget::new(20, 0.2)
    }
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBudget")
            .field("available", &self.available())
            .field("capacity", &(self.bucket.capacity / MILLI))
            .field("refund", &(self.bucket.refund as f64 / MILLI as f64))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spends_then_refills_by_fractions() {
        let budget = RetryBudget::new(2, 0.5);
        assert!(budget.try_withdraw());
        assert!(budget.try_withdraw());
        assert!(!budget.try_withdraw());
        budget.deposit();
        assert!(!budget.try_withdraw(), "half a token is not a retry");
        budget.deposit();
        assert!(budget.try_withdraw());
        for _ in 0..10 {
            budget.deposit();
        }
        assert_eq!(budget.available(), 2.0, "never above capacity");
    }

    #[test]
    fn debug_counts_retries_not_thousandths() {
        let budget = RetryBudget::new(2, 0.25);
        assert!(budget.try_withdraw());
        assert_eq!(
            format!("{budget:?}"),
            "RetryBudget { available: 1.0, capacity: 2, refund: 0.25 }"
        );
    }

    #[test]
    fn odd_refunds_are_clamped() {
        assert_eq!(RetryBudget::new(1, f64::NAN).bucket.refund, 0);
        assert_eq!(RetryBudget::new(1, -3.0).bucket.refund, 0);
        assert_eq!(RetryBudget::new(1, 50.0).bucket.refund, MILLI);
        let empty = RetryBudget::new(0, 1.0);
        assert!(!empty.try_withdraw());
    }
}
