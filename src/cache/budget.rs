//! The bound on bytes of origin responses held by in-flight misses and refreshes: each response is read into
//! memory only as far as a layer-wide budget allows, and a response that would pass it is streamed through to
//! its caller instead, unstored.

use super::stats::{Counters, bump};
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Bytes held, of at most `limit`, shared by every service of one layer.
pub(crate) struct ByteBudget {
    used: AtomicUsize,
    limit: usize,
    counters: Arc<Counters>,
}

impl ByteBudget {
    pub(crate) fn new(limit: usize, counters: Arc<Counters>) -> Arc<Self> {
        Arc::new(ByteBudget {
            used: AtomicUsize::new(0),
            limit,
            counters,
        })
    }

    /// Bytes held now.
    pub(crate) fn in_use(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// A claim on no bytes yet, grown as a response is read and given back when dropped.
    pub(crate) fn claim(self: &Arc<Self>) -> Claim {
        Claim {
            budget: Arc::clone(self),
            bytes: 0,
        }
    }
}

impl fmt::Debug for ByteBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ByteBudget")
            .field("used", &self.in_use())
            .field("limit", &self.limit)
            .finish()
    }
}

/// Bytes one response holds of the budget.
pub(crate) struct Claim {
    budget: Arc<ByteBudget>,
    bytes: usize,
}

impl Claim {
    /// Takes `n` more bytes; `false` (and counted) when that would pass the limit, taking none.
    pub(crate) fn grow(&mut self, n: usize) -> bool {
        let budget = &self.budget;
        let mut used = budget.used.load(Ordering::Acquire);
        loop {
            let Some(next) = used.checked_add(n).filter(|next| *next <= budget.limit) else {
                bump(&budget.counters.over_memory_budget);
                return false;
            };
            match budget
                .used
                .compare_exchange_weak(used, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    self.bytes += n;
                    return true;
                }
                Err(now) => used = now,
            }
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.budget.used.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

impl fmt::Debug for Claim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Claim").field("bytes", &self.bytes).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_share_the_limit_and_give_back_on_drop() {
        let counters = Arc::new(Counters::new("t"));
        let budget = ByteBudget::new(100, counters.clone());
        let mut a = budget.claim();
        let mut b = budget.claim();
        assert!(a.grow(60));
        assert!(!b.grow(41), "60 + 41 passes 100");
        assert!(b.grow(40));
        assert_eq!(budget.in_use(), 100);
        assert!(!a.grow(1));
        assert_eq!(counters.snapshot().over_memory_budget, 2);
        drop(a);
        assert_eq!(budget.in_use(), 40);
        drop(b);
        assert_eq!(budget.in_use(), 0);
        assert!(!budget.claim().grow(usize::MAX), "no overflow");
    }
}
