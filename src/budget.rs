//! A bound on the body bytes a layer reads into memory for the requests in flight, across all its services.
//!
//! The cache holds each origin response a miss or refresh reads, and each request body it reads from a stream
//! to key it, only as far as its budget allows: a response that would pass it is streamed through to its caller
//! unstored, a request goes to the origin unkeyed. The retry and auth layers hold the request bodies they read
//! for replay within one the same way: a body past it goes on once, as one over their cap does.

use bytes::Bytes;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Bytes held, of at most `limit`, shared by every service of one layer.
pub(crate) struct ByteBudget {
    used: AtomicUsize,
    limit: usize,
    /// Called at each refusal: the cache counts them in its stats.
    on_refusal: Box<dyn Fn() + Send + Sync>,
}

impl ByteBudget {
    /// A budget of `limit` bytes that calls `on_refusal` each time it refuses a claim more.
    pub(crate) fn new(limit: usize, on_refusal: impl Fn() + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(ByteBudget {
            used: AtomicUsize::new(0),
            limit,
            on_refusal: Box::new(on_refusal),
        })
    }

    /// Bytes held now.
    pub(crate) fn in_use(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    /// A claim on no bytes yet, grown as a body is read and given back when dropped.
    pub(crate) fn claim(self: &Arc<Self>) -> Claim {
        Claim {
            budget: Arc::clone(self),
            bytes: 0,
            refused: false,
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

/// Bytes one body holds of the budget.
pub(crate) struct Claim {
    budget: Arc<ByteBudget>,
    bytes: usize,
    refused: bool,
}

impl Claim {
    /// Takes `n` more bytes; `false` (and counted) when that would pass the limit, taking none.
    pub(crate) fn grow(&mut self, n: usize) -> bool {
        let budget = &self.budget;
        let mut used = budget.used.load(Ordering::Acquire);
        loop {
            let Some(next) = used.checked_add(n).filter(|next| *next <= budget.limit) else {
                (budget.on_refusal)();
                self.refused = true;
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

    /// Whether a [`grow`](Self::grow) was refused.
    pub(crate) fn refused(&self) -> bool {
        self.refused
    }

    /// `bytes`, holding this claim until the last of their clones is dropped: a request body goes to the origin,
    /// into a refresh, into each attempt of a retry and to the tasks that outlive its caller, and the budget is
    /// given back when no one holds it any more, however long that is.
    pub(crate) fn hold(self, bytes: Bytes) -> Bytes {
        if self.bytes == 0 {
            return bytes;
        }
        Bytes::from_owner(Held {
            bytes,
            _claim: self,
        })
    }
}

/// Bytes and the claim that counts them.
struct Held {
    bytes: Bytes,
    _claim: Claim,
}

impl AsRef<[u8]> for Held {
    fn as_ref(&self) -> &[u8] {
        &self.bytes
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
        let refusals = Arc::new(AtomicUsize::new(0));
        let counted = refusals.clone();
        let budget = ByteBudget::new(100, move || {
            counted.fetch_add(1, Ordering::Relaxed);
        });
        let mut a = budget.claim();
        let mut b = budget.claim();
        assert!(a.grow(60));
        assert!(!b.grow(41), "60 + 41 passes 100");
        assert!(b.grow(40));
        assert_eq!(budget.in_use(), 100);
        assert!(!a.grow(1));
        assert_eq!(refusals.load(Ordering::Relaxed), 2);
        drop(a);
        assert_eq!(budget.in_use(), 40);
        drop(b);
        assert_eq!(budget.in_use(), 0);
        assert!(!budget.claim().grow(usize::MAX), "no overflow");
    }

    #[test]
    fn held_bytes_give_back_their_claim_when_the_last_clone_goes() {
        let budget = ByteBudget::new(100, || {});
        let mut claim = budget.claim();
        assert!(claim.grow(5));
        assert!(!claim.refused());
        let held = claim.hold(Bytes::from_static(b"query"));
        let (clone, slice) = (held.clone(), held.slice(1..3));
        assert_eq!((&held[..], &slice[..]), (&b"query"[..], &b"ue"[..]));
        drop(held);
        drop(clone);
        assert_eq!(budget.in_use(), 5, "a slice still holds the bytes");
        drop(slice);
        assert_eq!(budget.in_use(), 0);

        let mut refused = budget.claim();
        assert!(!refused.grow(101));
        assert!(refused.refused());
    }
}
