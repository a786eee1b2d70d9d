//! A per-thread memo of decoded entry heads, so that a hot entry's headers are not parsed again on every hit.
//!
//! Decoding an entry read from the store is a pure function of its bytes: the head (timestamps, vary digest,
//! status, headers) is parsed, each header name looked up, each value checked, and every header hashed into a
//! fresh [`HeaderMap`]. A hot entry comes back byte for byte the same from read to read, so this memo keeps, per
//! thread, the heads of the entries it read last: their bytes up to the body, copied, and what they decode to.
//! A read whose head is byte for byte one of them takes a clone of that decoded head and a slice of its own
//! bytes as the body; any other is decoded as usual. The head is compared in full, so the memo can only ever
//! give what decoding would.
//!
//! A fresh hit goes further ([`with_kept`]): it is answered from the kept head itself, with the headers of that
//! head's latest answer ([`Renders`]) while its `ttl` and `age` are the same, so it neither copies the head
//! nor hashes a header. Anything else (a stale entry, another variant, a read that fills the near cache)
//! takes the decoded entry.
//!
//! A digest is remembered on its first read and its head kept on its second, so that a stream of keys each read
//! once costs a copy of 32 bytes, not of every head. The kept head is a copy: it never holds on to the buffer a
//! reply was read into, which may be large.
//!
//! Bounds: [`SLOTS`] slots a thread, each keeping a head of at most [`MAX_HEAD`] bytes and [`MAX_HEADERS`]
//! headers (a larger head is decoded every time). Slots are taken round robin; at worst reads evict each other
//! and decode as usual.

use super::entry::{DecodeError, Entry, body_of};
use super::key::{vary_digest_with, vary_names};
use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName};
use std::cell::RefCell;

/// Slots per thread.
pub(crate) const SLOTS: usize = 8;

/// The longest head a slot keeps, in bytes.
pub(crate) const MAX_HEAD: usize = 4096;

/// The most headers a kept head may have.
pub(crate) const MAX_HEADERS: usize = 32;

struct Slot {
    digest: [u8; 32],
    /// The entry's bytes up to its body length, copied; empty while the digest has been read only once.
    raw: Bytes,
    /// What `raw` decodes to, with an empty body; its header values are slices of `raw`.
    head: Option<Entry>,
    /// The headers of the latest answer made from `head`.
    rendered: Option<Rendered>,
    /// The request headers answers from `head` depend on ([`vary_names`]), read once; `None`: none.
    vary: Option<Vec<HeaderName>>,
}

#[derive(Default)]
struct Heads {
    slots: Vec<Slot>,
    /// The slot a new digest takes once all are in use.
    next: usize,
}

thread_local! {
    static HEADS: RefCell<Heads> = RefCell::default();
}

/// Calls `answer` with the kept head of `bytes` (read for `digest`) when this thread keeps it; returns what
/// `answer` returns, or `None` when the head is not kept (then [`decode`] it). `max_body` bounds a
/// compressed body, as in [`Entry::decode`].
#[inline]
pub(crate) fn with_kept<T>(
    bytes: &Bytes,
    digest: &[u8; 32],
    max_body: usize,
    answer: impl FnOnce(Kept<'_>) -> Option<T>,
) -> Option<T> {
    HEADS
        .try_with(|heads| {
            let mut heads = heads.try_borrow_mut().ok()?;
            let slot = heads.kept(bytes, digest)?;
            let head = slot.head.as_ref()?;
            let body = body_of(bytes, slot.raw.len(), max_body)?;
            answer(Kept {
                head,
                body,
                vary: slot.vary.as_deref(),
                renders: Renders::of(&mut slot.rendered),
            })
        })
        .ok()
        .flatten()
}

/// An entry read from the store whose head this thread keeps.
pub(crate) struct Kept<'a> {
    /// The entry's head: all but its body, which is empty. Its headers are the stored ones, with no room for
    /// more: an answer's are made through [`renders`](Self::renders), once per `ttl` and `age`.
    pub(crate) head: &'a Entry,
    /// The entry's body: a slice of the bytes read, or what they decompress to.
    pub(crate) body: Bytes,
    /// The headers of the latest answer made from this head.
    pub(crate) renders: Renders<'a>,
    /// The request headers answers from the head depend on, as read when it was kept.
    vary: Option<&'a [HeaderName]>,
}

impl Kept<'_> {
    /// [`vary_digest`](super::key::vary_digest) of the head's headers and `request`'s, without reading the
    /// head's `Vary` again.
    pub(crate) fn vary_digest(&self, request: &HeaderMap) -> Option<[u8; 32]> {
        vary_digest_with(self.vary, &self.head.headers, request)
    }
}

/// Decodes `bytes`, read for `digest`, as [`Entry::decode`] does, through this thread's memo.
pub(crate) fn decode(
    bytes: &Bytes,
    digest: &[u8; 32],
    max_body: usize,
) -> Result<Entry, DecodeError> {
    HEADS
        .try_with(|heads| match heads.try_borrow_mut() {
            Ok(mut heads) => heads.decode(bytes, digest, max_body),
            // A re-entrant call (there is none): no memo.
            Err(_) => Entry::decode(bytes, digest, max_body),
        })
        // The thread is being torn down: no memo.
        .unwrap_or_else(|_| Entry::decode(bytes, digest, max_body))
}

impl Heads {
    /// The slot keeping the head of `bytes`, read for `digest`.
    fn kept(&mut self, bytes: &Bytes, digest: &[u8; 32]) -> Option<&mut Slot> {
        self.slots.iter_mut().find(|slot| {
            slot.digest == *digest
                && slot.head.is_some()
                && bytes.get(..slot.raw.len()) == Some(&slot.raw[..])
        })
    }

    fn decode(
        &mut self,
        bytes: &Bytes,
        digest: &[u8; 32],
        max_body: usize,
    ) -> Result<Entry, DecodeError> {
        if let Some(slot) = self.kept(bytes, digest)
            && let Some(head) = &slot.head
            && let Some(body) = body_of(bytes, slot.raw.len(), max_body)
        {
            // A fresh hit is answered from the kept head itself (`with_kept`); this copy is for the rest.
            return Ok(Entry {
                headers: head.headers.clone(),
                body,
                ..*head
            });
        }
        let (entry, head_len) = Entry::decode_head(bytes, digest, max_body)?;
        // A digest may have more than one head: its entry changed, or two stores (or namespaces) hold an entry
        // for it. A head not kept is kept on its second read, in the slot its first read took.
        let pending = self
            .slots
            .iter_mut()
            .find(|slot| slot.digest == *digest && slot.head.is_none());
        match pending {
            Some(slot) => slot.keep(bytes, head_len, entry.headers.len()),
            None => self.remember(*digest),
        }
        Ok(entry)
    }

    /// Remembers a digest read for the first time, in the next slot.
    fn remember(&mut self, digest: [u8; 32]) {
        let slot = Slot {
            digest,
            raw: Bytes::new(),
            head: None,
            rendered: None,
            vary: None,
        };
        if self.slots.len() < SLOTS {
            self.slots.push(slot);
            return;
        }
        if let Some(old) = self.slots.get_mut(self.next) {
            *old = slot;
        }
        self.next = (self.next + 1) % SLOTS;
    }
}

impl Slot {
    /// Keeps the head of `bytes`, which ends at `head_len` and holds `headers` headers (or forgets the one kept,
    /// when it is too large to keep).
    fn keep(&mut self, bytes: &Bytes, head_len: usize, headers: usize) {
        self.raw = Bytes::new();
        self.head = None;
        self.rendered = None;
        let Some(prefix) = bytes.get(..head_len) else {
            return;
        };
        if head_len > MAX_HEAD || headers > MAX_HEADERS {
            return;
        }
        // The head with an empty body, decoded again from a copy so that its values point into the copy.
        let mut copy = BytesMut::with_capacity(head_len + 4);
        copy.put_slice(prefix);
        copy.put_u32(0);
        let copy = copy.freeze();
        if let Ok((head, _)) = Entry::decode_head(&copy, &self.digest, 0) {
            self.raw = copy.slice(..head_len);
            self.vary = vary_names(&head.headers);
            self.head = Some(head);
        }
    }
}

/// Where an answer's headers come from: made for it, or the headers of the latest answer from the same entry
/// (a near cache's front slot, a kept head) if its `ttl` and `age` were the same (`Age` and `Cache-Status`
/// change once a second at most). The slot is the thread's own: nothing is shared between cores.
pub(crate) struct Renders<'a> {
    latest: Option<&'a mut Option<Rendered>>,
}

/// The headers of one answer, and the `ttl` and `age` they were made for.
pub(crate) struct Rendered {
    ttl: i64,
    age: u64,
    headers: HeaderMap,
}

impl<'a> Renders<'a> {
    /// Renders that keep the latest answer's headers in `latest`.
    pub(crate) fn of(latest: &'a mut Option<Rendered>) -> Self {
        Renders {
            latest: Some(latest),
        }
    }

    /// Renders that keep nothing: every answer's headers are made.
    #[cfg_attr(
        not(any(feature = "redis", test)),
        expect(
            dead_code,
            reason = "only the near cache, which needs Redis, answers without a slot (and the tests)"
        )
    )]
    pub(crate) fn none() -> Self {
        Renders { latest: None }
    }

    /// The headers of an answer with `ttl` and `age`: a clone of the latest answer's if they were the same,
    /// else `make`'s (and kept for the next).
    #[inline]
    pub(crate) fn headers(
        &mut self,
        ttl: i64,
        age: u64,
        make: impl FnOnce() -> HeaderMap,
    ) -> HeaderMap {
        let Some(latest) = self.latest.as_deref_mut() else {
            return make();
        };
        if let Some(latest) = latest
            && latest.ttl == ttl
            && latest.age == age
        {
            return latest.headers.clone();
        }
        let headers = make();
        *latest = Some(Rendered {
            ttl,
            age,
            headers: headers.clone(),
        });
        headers
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::AGE;
    use http::{HeaderValue, StatusCode, header};

    /// The body cap the decoder is given.
    const MAX_BODY: usize = 1 << 20;

    fn entry(stored_at: u64, headers: usize, body: &'static [u8]) -> Entry {
        let mut map = HeaderMap::new();
        map.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        for i in 1..headers {
            map.append(
                http::HeaderName::from_bytes(format!("x-h{i}").as_bytes()).unwrap(),
                HeaderValue::from(i),
            );
        }
        Entry {
            stored_at,
            fresh_until: stored_at + 10_000,
            stale_until: stored_at + 40_000,
            stale_if_error_until: stored_at + 100_000,
            vary: Some([5; 32]),
            status: StatusCode::CREATED,
            headers: map,
            body: Bytes::from_static(body),
        }
    }

    fn same(a: &Entry, b: &Entry) {
        assert_eq!(
            (
                a.stored_at,
                a.fresh_until,
                a.stale_until,
                a.stale_if_error_until
            ),
            (
                b.stored_at,
                b.fresh_until,
                b.stale_until,
                b.stale_if_error_until
            )
        );
        assert_eq!((a.vary, a.status), (b.vary, b.status));
        assert_eq!(a.headers, b.headers);
        assert_eq!(a.body, b.body);
    }

    fn within(bytes: &Bytes, ptr: *const u8) -> bool {
        let start = bytes.as_ptr() as usize;
        (start..start + bytes.len()).contains(&(ptr as usize))
    }

    /// Whether `entry`'s header values were taken from the memo (they do not point into `bytes`).
    fn from_memo(entry: &Entry, bytes: &Bytes) -> bool {
        let value = entry.headers.get("x-h1").expect("test entries have x-h1");
        !within(bytes, value.as_bytes().as_ptr())
    }

    #[test]
    fn a_third_read_takes_the_kept_head_and_its_own_body() {
        for headers in [2, 8, MAX_HEADERS] {
            let digest = [headers as u8; 32];
            let stored = entry(1_000, headers, b"body one");
            for read in 1..=4 {
                // A fresh buffer each time, as a store reply is.
                let bytes = Bytes::from(stored.encode(&digest).to_vec());
                let mut decoded = decode(&bytes, &digest, MAX_BODY).unwrap();
                same(&decoded, &stored);
                assert!(within(&bytes, decoded.body.as_ptr()), "read {read}");
                assert_eq!(from_memo(&decoded, &bytes), read >= 3, "read {read}");
                // An answer's headers go on the copy, never on the kept head.
                decoded.headers.insert(header::AGE, HeaderValue::from(read));
            }
        }
    }

    #[test]
    #[cfg(feature = "compression")]
    fn a_compressed_entry_takes_the_kept_head_and_decompresses_its_own_body() {
        let digest = [9u8; 32];
        let body: &'static [u8] = "{\"rows\":[1,2,3]}".repeat(200).leak().as_bytes();
        let stored = entry(1_000, 4, body);
        for read in 1..=4 {
            let bytes = Bytes::from(stored.encode_with(&digest, Some(0)).to_vec());
            assert!(bytes.len() < body.len());
            let decoded = decode(&bytes, &digest, MAX_BODY).unwrap();
            same(&decoded, &stored);
            assert_eq!(from_memo(&decoded, &bytes), read >= 3, "read {read}");
            let kept = with_kept(&bytes, &digest, MAX_BODY, |kept| Some(kept.body));
            assert_eq!(kept.as_deref(), (read >= 2).then_some(body), "read {read}");
            // Over the cap, the kept head does not answer either.
            assert!(with_kept(&bytes, &digest, body.len() - 1, |kept| Some(kept.body)).is_none());
        }
    }

    #[test]
    fn a_changed_entry_or_another_digest_is_decoded_again() {
        let digest = [2u8; 32];
        let first = entry(2_000, 2, b"old");
        for _ in 0..3 {
            decode(&first.encode(&digest), &digest, MAX_BODY).unwrap();
        }
        // Stored again: the new head, not the kept one.
        let second = entry(3_000, 2, b"new");
        let bytes = second.encode(&digest);
        let decoded = decode(&bytes, &digest, MAX_BODY).unwrap();
        same(&decoded, &second);
        assert!(!from_memo(&decoded, &bytes));
        // The same bytes read for another key are still refused.
        assert_eq!(
            decode(&bytes, &[3u8; 32], MAX_BODY).unwrap_err(),
            DecodeError::DigestMismatch
        );
        // A kept head with a body that is not as long as it says: malformed, as without the memo.
        for _ in 0..3 {
            decode(&bytes, &digest, MAX_BODY).unwrap();
        }
        let mut longer = bytes.to_vec();
        longer.push(b'!');
        assert_eq!(
            decode(&Bytes::from(longer), &digest, MAX_BODY).unwrap_err(),
            DecodeError::Malformed
        );
        assert_eq!(
            decode(&bytes.slice(..bytes.len() - 1), &digest, MAX_BODY).unwrap_err(),
            DecodeError::Malformed
        );
    }

    #[test]
    fn two_heads_of_one_digest_are_both_kept() {
        // Two stores, or two namespaces, hold an entry for one request, and reads alternate between them.
        let digest = [6u8; 32];
        let a = entry(6_000, 2, b"a").encode(&digest);
        let b = entry(7_000, 2, b"b").encode(&digest);
        for round in 1..=4 {
            for bytes in [&a, &b] {
                let decoded = decode(bytes, &digest, MAX_BODY).unwrap();
                assert_eq!(decoded.body, bytes.slice(bytes.len() - 1..));
                if round == 4 {
                    assert!(
                        from_memo(&decoded, bytes),
                        "both heads kept by the fourth round"
                    );
                }
            }
        }
        let answered = with_kept(&a, &digest, MAX_BODY, |kept| {
            Some((kept.head.stored_at, kept.body))
        });
        assert_eq!(answered, Some((6_000, Bytes::from_static(b"a"))));
    }

    #[test]
    fn heads_are_bounded_in_number_and_size() {
        let large = entry(4_000, MAX_HEADERS + 1, b"x");
        let digest = [4u8; 32];
        for _ in 0..4 {
            let bytes = large.encode(&digest);
            let decoded = decode(&bytes, &digest, MAX_BODY).unwrap();
            same(&decoded, &large);
            assert!(!from_memo(&decoded, &bytes), "too many headers to keep");
        }
        for i in 0..(SLOTS * 3) as u8 {
            let digest = [i; 32];
            let e = entry(u64::from(i), 2, b"x");
            for _ in 0..3 {
                same(&decode(&e.encode(&digest), &digest, MAX_BODY).unwrap(), &e);
            }
        }
        HEADS.with(|heads| {
            let heads = heads.borrow();
            assert_eq!(heads.slots.len(), SLOTS);
            assert!(heads.slots.iter().all(|s| s.raw.len() <= MAX_HEAD));
            // Taken round robin: the last `SLOTS` digests are the ones kept, each with its head.
            let mut kept: Vec<u8> = heads
                .slots
                .iter()
                .filter(|s| s.head.is_some())
                .map(|s| s.digest[0])
                .collect();
            kept.sort_unstable();
            let last: Vec<u8> = (SLOTS as u8 * 2..SLOTS as u8 * 3).collect();
            assert_eq!(kept, last);
        });
        // A head of `MAX_HEAD` bytes is kept, one of a byte more is not.
        let padded = |len: usize| {
            let mut e = entry(5_000, 2, b"x");
            e.headers
                .insert("x-pad", HeaderValue::from_str(&"p".repeat(len)).unwrap());
            e
        };
        let (_, unpadded) =
            Entry::decode_head(&padded(0).encode(&digest), &digest, MAX_BODY).unwrap();
        for (len, keeps) in [(MAX_HEAD, true), (MAX_HEAD + 1, false)] {
            let e = padded(len - unpadded);
            let digest = [if keeps { 0xaa } else { 0xbb }; 32];
            for read in 1..=3 {
                let bytes = e.encode(&digest);
                assert_eq!(
                    Entry::decode_head(&bytes, &digest, MAX_BODY).unwrap().1,
                    len
                );
                let decoded = decode(&bytes, &digest, MAX_BODY).unwrap();
                same(&decoded, &e);
                assert_eq!(
                    from_memo(&decoded, &bytes),
                    keeps && read == 3,
                    "{len} bytes, read {read}"
                );
            }
        }
    }

    /// An answer's headers are made once per `ttl` and `age`, and made again when either changes.
    #[test]
    fn answer_headers_follow_the_second() {
        let made = std::cell::Cell::new(0);
        let make = |age: &'static str| {
            made.set(made.get() + 1);
            let mut headers = HeaderMap::new();
            headers.insert(AGE, HeaderValue::from_static(age));
            headers
        };
        let mut latest = None;
        let mut age = |ttl, secs, text| {
            let mut renders = Renders::of(&mut latest);
            renders.headers(ttl, secs, || make(text))[AGE].clone()
        };
        assert_eq!(age(30, 0, "0"), "0");
        assert_eq!(age(30, 0, "unused"), "0");
        assert_eq!(age(29, 1, "1"), "1");
        assert_eq!(age(29, 2, "2"), "2");
        assert_eq!(made.get(), 3);
        let mut unkept = Renders::none();
        assert_eq!(unkept.headers(29, 2, || make("2"))[AGE], "2");
        assert_eq!(made.get(), 4, "without a slot, made every time");
    }
}
