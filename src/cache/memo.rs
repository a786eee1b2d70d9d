//! A per-thread memo of request digests, so that a request seen a moment ago is not canonicalised and hashed
//! again.
//!
//! A request's digest is a pure function of the request's fields and the layer's key settings, and SHA-256 with
//! JSON canonicalisation is most of what a cache hit costs in this process. Hot requests repeat: this memo
//! remembers, per thread, the last few requests' *fingerprints* (their fields as sent, length-prefixed, with the
//! id of the layer's key settings) and their digests. A request whose fingerprint is byte for byte one of them
//! takes its digest; any other is hashed as usual. A fingerprint is compared in full, so the memo can only ever
//! give the digest the request's own hash would.
//!
//! Bounds: [`SLOTS`] slots a thread, each remembering at most [`MAX_FINGERPRINT`] bytes; a request whose
//! fingerprint is longer is never memoised. The slots form sets of [`WAYS`]; a seeded hash of the fingerprint
//! picks the set, so a client cannot aim requests at one, and a few hot requests that share a set do not evict
//! each other. At worst requests evict each other and are hashed as usual.

use std::cell::RefCell;
use std::hash::{BuildHasher, RandomState};

/// Slots per thread.
pub(crate) const SLOTS: usize = 64;

/// Slots per set: a fingerprint may sit in any slot of its set.
pub(crate) const WAYS: usize = 4;

/// The longest fingerprint a slot remembers: a query with a body of about 2 KiB.
pub(crate) const MAX_FINGERPRINT: usize = 2048;

struct Slot {
    hash: u64,
    fingerprint: Vec<u8>,
    digest: [u8; 32],
}

struct Memo {
    seed: u64,
    slots: Vec<Option<Slot>>,
    /// Per set, the way the next new fingerprint takes (round robin).
    next: Vec<u8>,
    /// The fingerprint being built, reused from request to request.
    scratch: Vec<u8>,
}

thread_local! {
    static MEMO: RefCell<Memo> = RefCell::new(Memo {
        seed: RandomState::new().hash_one(0x6d65_6d6f_u64),
        slots: Vec::new(),
        next: Vec::new(),
        scratch: Vec::new(),
    });
}

/// Writes a request's fingerprint: each field length-prefixed, so no two fields can run into each other.
pub(crate) struct Fingerprint<'a> {
    out: Option<&'a mut Vec<u8>>,
}

impl Fingerprint<'_> {
    /// Appends one field.
    pub(crate) fn field(&mut self, bytes: &[u8]) {
        let Some(out) = self.out.as_deref_mut() else {
            return;
        };
        if out.len() + 4 + bytes.len() > MAX_FINGERPRINT {
            // Too long to remember: give up on this request.
            self.out = None;
            return;
        }
        // Within MAX_FINGERPRINT, so the length fits.
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(bytes);
    }

    /// Appends a count (of values of one header, say).
    pub(crate) fn count(&mut self, n: usize) {
        self.field(&(n as u64).to_le_bytes());
    }
}

/// The digest of the request `fingerprint` writes (with `id` identifying the key settings): remembered, or
/// else `compute`d and remembered.
pub(crate) fn digest(
    id: u64,
    fingerprint: impl FnOnce(&mut Fingerprint<'_>),
    compute: impl FnOnce() -> [u8; 32],
) -> [u8; 32] {
    MEMO.with(|memo| {
        // A re-entrant call (there is none) or a thread being torn down: no memo.
        let Ok(mut memo) = memo.try_borrow_mut() else {
            return compute();
        };
        let memo = &mut *memo;
        let mut scratch = std::mem::take(&mut memo.scratch);
        scratch.clear();
        scratch.extend_from_slice(&id.to_le_bytes());
        let mut writer = Fingerprint {
            out: Some(&mut scratch),
        };
        fingerprint(&mut writer);
        let complete = writer.out.is_some();
        if !complete {
            memo.scratch = scratch;
            return compute();
        }
        let hash = mix(memo.seed, &scratch);
        if memo.slots.is_empty() {
            memo.slots.resize_with(SLOTS, || None);
            memo.next.resize(SLOTS / WAYS, 0);
        }
        let set = (hash % (SLOTS / WAYS) as u64) as usize;
        let ways = set * WAYS..(set + 1) * WAYS;
        for slot in memo.slots[ways.clone()].iter().flatten() {
            if slot.hash == hash && slot.fingerprint == scratch {
                let digest = slot.digest;
                memo.scratch = scratch;
                return digest;
            }
        }
        let digest = compute();
        let way = usize::from(memo.next[set]) % WAYS;
        memo.next[set] = memo.next[set].wrapping_add(1);
        match &mut memo.slots[ways.start + way] {
            // The slot's buffer takes the fingerprint; the old one becomes the next scratch.
            Some(slot) => {
                std::mem::swap(&mut slot.fingerprint, &mut scratch);
                slot.hash = hash;
                slot.digest = digest;
            }
            empty => {
                *empty = Some(Slot {
                    hash,
                    fingerprint: std::mem::take(&mut scratch),
                    digest,
                });
            }
        }
        memo.scratch = scratch;
        digest
    })
}

/// A seeded hash of `bytes`: a multiply and a fold per eight bytes, every bit of the input reaching the low
/// bits the slot is chosen by.
fn mix(seed: u64, bytes: &[u8]) -> u64 {
    let mut h = seed;
    let mut step = |word: u64| {
        let x = (h ^ word).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        h = x ^ (x >> 32);
    };
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        step(u64::from_le_bytes(word));
    }
    let rest = chunks.remainder();
    let mut word = [0u8; 8];
    word[..rest.len()].copy_from_slice(rest);
    step(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 59));
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn counted(id: u64, fields: &[&[u8]], calls: &Cell<u32>) -> [u8; 32] {
        digest(
            id,
            |f| fields.iter().for_each(|field| f.field(field)),
            || {
                calls.set(calls.get() + 1);
                let mut d = [0u8; 32];
                d[0] = fields.len() as u8;
                d[1] = id as u8;
                d
            },
        )
    }

    #[test]
    fn a_repeated_request_is_not_hashed_again() {
        let calls = Cell::new(0);
        let first = counted(1, &[b"GET", b"/a"], &calls);
        assert_eq!(counted(1, &[b"GET", b"/a"], &calls), first);
        assert_eq!(calls.get(), 1);
    }

    #[test]
    fn any_difference_is_hashed() {
        let calls = Cell::new(0);
        counted(2, &[b"GET", b"/a"], &calls);
        // Another field value, other field boundaries, another layer: each computed.
        counted(2, &[b"GET", b"/b"], &calls);
        counted(2, &[b"GET/", b"a"], &calls);
        counted(3, &[b"GET", b"/a"], &calls);
        assert_eq!(calls.get(), 4);
    }

    /// As many hot requests as a set has ways stay remembered however their sets fall.
    #[test]
    fn a_few_hot_requests_do_not_evict_each_other() {
        let calls = Cell::new(0);
        for _ in 0..3 {
            for i in 0..WAYS as u32 {
                counted(6, &[b"GET", &i.to_le_bytes()], &calls);
            }
        }
        assert_eq!(calls.get(), WAYS as u32);
    }

    #[test]
    fn long_fingerprints_are_not_remembered() {
        let calls = Cell::new(0);
        let body = vec![b'x'; MAX_FINGERPRINT];
        counted(4, &[b"POST", &body], &calls);
        counted(4, &[b"POST", &body], &calls);
        assert_eq!(calls.get(), 2);
    }

    #[test]
    fn slots_are_bounded() {
        let calls = Cell::new(0);
        for i in 0..(SLOTS as u32 * 8) {
            counted(5, &[&i.to_le_bytes()], &calls);
        }
        MEMO.with(|memo| {
            let memo = memo.borrow();
            assert_eq!(memo.slots.len(), SLOTS);
            assert!(
                memo.slots
                    .iter()
                    .flatten()
                    .all(|slot| slot.fingerprint.len() <= MAX_FINGERPRINT)
            );
        });
    }
}
