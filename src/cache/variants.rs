//! An entry per variant: what this process learned of the request headers a URI's answers vary on.
//!
//! A response's `Vary` names request headers its answer depends on (RFC 9111 §4.1). A key holds one stored
//! response, so without more, two clients that differ in such a header (`Accept-Language: de` and `fr`, the
//! `Origin` of two pages a CORS API answers) would replace each other's entry on every call and never hit. The
//! cache keeps an entry per variant instead, the way Squid does:
//!
//! - A request is first keyed as usual (its *primary* key). When the entry found there varies on headers whose
//!   values this request does not share, the cache learns their names ([`learnable`](super::key::learnable)), and
//!   reads the request's own variant under a key of its own ([`variant_key`]: the primary digest with the
//!   request's values of those headers). Its miss fills that key, with the lease, coalescing and marker of that
//!   key.
//! - A request whose `Accept` refuses the type of the answer found there
//!   ([`refuses_type`](super::key::refuses_type): an origin that chooses between HTML and JSON by `Accept` without
//!   naming it in `Vary`) has a variant of its own too, told apart by its `Accept` values, so that clients asking
//!   for each type keep an entry each instead of replacing each other's.
//! - Once learned, this process keys such requests by their variant at once: one store read, as any hit.
//! - The primary entry stays where it is: it keeps answering its own variant, and its `Vary` is what processes
//!   learn from. A process remembers which variant it holds, so that requests of that variant keep reading it,
//!   until a read finds another variant there (the entry expired and was filled again for another).
//!
//! The stored `Vary` check runs on every entry as before, so a variant key only ever decides *where* an answer
//! is stored, never *whether* it answers: what was learned can be wrong or out of date (the origin stopped
//! varying, or varies on more) without an answer reaching the wrong requester. Variant entries are recorded
//! under their URI's tag, so that a write to the URI removes them (the store must keep tags; over one that does
//! not, the layer keeps one entry per key).

use super::key::{variant_key, vary_digest_with, vary_names};
use http::header::{ACCESS_CONTROL_ALLOW_ORIGIN, CONTENT_ENCODING, CONTENT_TYPE, VARY};
use http::{HeaderMap, HeaderName, HeaderValue};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// The most primary keys a process remembers the varying headers of (each takes a few hundred bytes: the names,
/// and the fields of the answer under the primary key that say what it varies on); past it, one learned key is
/// forgotten for each new one (its requests then read the primary entry first once more, and learn again).
const MAX_LEARNED: usize = 8_192;

/// What this process learned of the answers to one primary key.
#[derive(Debug)]
pub(crate) struct Learned {
    /// The request headers that tell their variants apart ([`learnable`](super::key::learnable)); none when
    /// only a refused type does.
    pub(crate) names: Arc<[HeaderName]>,
    /// The answer stored under the primary key: the variant it was stored for, which a request of that variant
    /// finds there.
    held: Held,
}

/// What says which variant the answer under a primary key was stored for.
#[derive(Debug)]
struct Held {
    /// Its fields that say what it varies on (`Vary`, `Content-Encoding`, `Access-Control-Allow-Origin`,
    /// `Content-Type`).
    fields: HeaderMap,
    /// The request headers they name, as [`vary_names`] reads them, read once.
    names: Option<Vec<HeaderName>>,
    /// The digest of the variant it was stored for ([`vary_digest`](super::key::vary_digest)).
    vary: Option<[u8; 32]>,
}

impl Learned {
    /// What the answer `response` (stored for the variant whose digest is `vary`) under a primary key says of
    /// its variants, which vary on `names`.
    pub(crate) fn new(
        names: Arc<[HeaderName]>,
        response: &HeaderMap,
        vary: Option<[u8; 32]>,
    ) -> Self {
        let mut fields = HeaderMap::new();
        for name in [
            VARY,
            CONTENT_ENCODING,
            ACCESS_CONTROL_ALLOW_ORIGIN,
            CONTENT_TYPE,
        ] {
            for value in response.get_all(&name) {
                // A copy: the answer's values may be slices of a client's read buffer (fred's replies, hyper's
                // parsed heads), which a clone would keep whole for as long as this is remembered. (The bytes
                // of a value are a value: the clone is there only so that no field is ever dropped.)
                let copy =
                    HeaderValue::from_bytes(value.as_bytes()).unwrap_or_else(|_| value.clone());
                fields.append(name.clone(), copy);
            }
        }
        let held = Held {
            names: vary_names(&fields),
            fields,
            vary,
        };
        Learned { names, held }
    }

    /// The digest of the key of the request whose primary key's digest is `primary` and whose headers are
    /// `request`: `None` for the variant the primary key holds, else its own variant's.
    fn variant_of(&self, primary: &[u8; 32], request: &HeaderMap) -> Option<[u8; 32]> {
        let held = &self.held;
        let digest = vary_digest_with(held.names.as_deref(), &held.fields, request);
        if digest == held.vary {
            return None;
        }
        self.own_variant(primary, request)
    }

    /// The digest of the key the request with `request` headers keeps its own variant under, whether or not it
    /// is of the variant held under `primary` ([`variant_key`]); `None` when it is kept under `primary`.
    pub(crate) fn own_variant(&self, primary: &[u8; 32], request: &HeaderMap) -> Option<[u8; 32]> {
        variant_key(primary, &self.names, &self.held.fields, request)
    }
}

/// The request headers this process learned that answers vary on, per primary key's digest.
#[derive(Debug, Default)]
pub(crate) struct Variants {
    /// Whether anything was ever learned: until then a request pays one load, and no lock.
    any: AtomicBool,
    learned: Mutex<HashMap<[u8; 32], Arc<Learned>>>,
}

impl Variants {
    /// The digest of the variant key the request with `headers`, whose primary key's digest is `primary`, is
    /// stored under; `None` when it is stored under `primary`: this process knows of no headers the answers to
    /// `primary` vary on, or the request is of the variant last found there.
    #[inline]
    pub(crate) fn variant_of(&self, primary: &[u8; 32], headers: &HeaderMap) -> Option<[u8; 32]> {
        if !self.any.load(Ordering::Relaxed) {
            return None;
        }
        self.learned_of(primary)?.variant_of(primary, headers)
    }

    /// What this process learned of the answers to `primary`.
    pub(crate) fn learned_of(&self, primary: &[u8; 32]) -> Option<Arc<Learned>> {
        let learned = self.learned.lock().unwrap_or_else(PoisonError::into_inner);
        learned.get(primary).cloned()
    }

    /// Remembers what the answer stored under `primary` says of its variants.
    pub(crate) fn learn(&self, primary: [u8; 32], learned: Learned) {
        let mut all = self.learned.lock().unwrap_or_else(PoisonError::into_inner);
        if all.len() >= MAX_LEARNED && !all.contains_key(&primary) {
            // Any one: which is forgotten matters little, since forgetting costs one more read at most.
            if let Some(forgotten) = all.keys().next().copied() {
                all.remove(&forgotten);
            }
        }
        all.insert(primary, Arc::new(learned));
        self.any.store(true, Ordering::Relaxed);
    }

    /// How many primary keys this process learned the varying headers of.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.learned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::key::{learnable, vary_digest};

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| (HeaderName::from_static(name), value.parse().unwrap()))
            .collect()
    }

    /// What a process learns from an answer with `response` headers, stored under `primary` for `stored_for`.
    fn learn(variants: &Variants, primary: [u8; 32], response: &HeaderMap, stored_for: &HeaderMap) {
        let names = learnable(response, &[]).unwrap();
        let vary = vary_digest(response, stored_for);
        variants.learn(primary, Learned::new(names, response, vary));
    }

    #[test]
    fn nothing_learned_keys_every_request_by_its_primary_key() {
        let variants = Variants::default();
        assert_eq!(variants.variant_of(&[1; 32], &headers(&[])), None);
        let response = headers(&[("vary", "accept-language")]);
        learn(&variants, [1; 32], &response, &headers(&[]));
        // Another primary key learned nothing.
        let de = headers(&[("accept-language", "de")]);
        assert_eq!(variants.variant_of(&[2; 32], &de), None);
        assert!(variants.variant_of(&[1; 32], &de).is_some());
    }

    /// What a process remembers of an answer is its own copy: none of it lies in the buffer the answer was read
    /// from (a client's, which many replies share), and it tells the variants apart as the answer did.
    #[test]
    fn what_is_learned_keeps_no_slice_of_the_answer_read() {
        let read = bytes::Bytes::from(b"Accept-Language, Origin*text/plain".repeat(1000));
        let slice = |range| HeaderValue::from_maybe_shared(read.slice(range)).unwrap();
        let mut response = HeaderMap::new();
        response.append(VARY, slice(0..23));
        response.append(ACCESS_CONTROL_ALLOW_ORIGIN, slice(23..24));
        response.append(CONTENT_TYPE, slice(24..34));
        let learned = Learned::new(learnable(&response, &[]).unwrap(), &response, None);
        let fields = &learned.held.fields;
        assert_eq!(fields, &response);
        let within = |value: &HeaderValue| read.as_ptr_range().contains(&value.as_bytes().as_ptr());
        assert!(
            !fields.values().any(within),
            "a slice of the read buffer is kept"
        );
        let de = headers(&[("accept-language", "de")]);
        let en = headers(&[("accept-language", "en")]);
        assert_ne!(
            learned.own_variant(&[1; 32], &de),
            learned.own_variant(&[1; 32], &en)
        );
    }

    #[test]
    fn a_learned_key_names_one_variant_per_value_of_its_headers() {
        let variants = Variants::default();
        let response = headers(&[
            ("vary", "Accept-Language"),
            ("access-control-allow-origin", "https://a.example"),
        ]);
        let stored_for = headers(&[("accept-language", "en"), ("origin", "https://a.example")]);
        learn(&variants, [1; 32], &response, &stored_for);
        let of = |pairs| variants.variant_of(&[1; 32], &headers(pairs));
        // The variant the primary key holds is read there.
        assert_eq!(
            of(&[("origin", "https://a.example"), ("accept-language", " en")]),
            None
        );
        let de = of(&[("accept-language", "de"), ("origin", "https://a.example")]).unwrap();
        assert_ne!(de, [1; 32]);
        // The same values, spaced or ordered otherwise among the request's headers: the same variant.
        assert_eq!(
            of(&[("origin", "https://a.example"), ("accept-language", " de ")]),
            Some(de)
        );
        let others = [
            of(&[("accept-language", "fr"), ("origin", "https://a.example")]),
            of(&[("accept-language", "de"), ("origin", "https://b.example")]),
            of(&[("accept-language", "de")]),
        ];
        for other in others {
            assert!(other.is_some_and(|other| other != de), "{other:?}");
        }
        // Another primary key with the same values is another variant.
        learn(&variants, [2; 32], &response, &stored_for);
        let other = variants.variant_of(
            &[2; 32],
            &headers(&[("accept-language", "de"), ("origin", "https://a.example")]),
        );
        assert!(other.is_some_and(|other| other != de));
    }

    #[test]
    fn a_request_refusing_the_held_type_has_a_variant_of_its_own() {
        let variants = Variants::default();
        // JSON held under the primary key, stored for a request that took it; nothing named in `Vary`.
        let response = headers(&[("content-type", "application/json")]);
        let stored_for = headers(&[("accept", "application/json")]);
        variants.learn(
            [1; 32],
            Learned::new(Arc::new([]), &response, vary_digest(&response, &stored_for)),
        );
        let of =
            |accept: &'static str| variants.variant_of(&[1; 32], &headers(&[("accept", accept)]));
        for taking in ["application/json", "*/*", "application/*, text/html;q=0.5"] {
            assert_eq!(of(taking), None, "{taking}");
        }
        assert_eq!(variants.variant_of(&[1; 32], &headers(&[])), None);
        let html = of("text/html").unwrap();
        assert_eq!(of(" text/html "), Some(html));
        assert!(of("text/csv").is_some_and(|csv| csv != html));
        // Its own variant's key, whichever variant the primary key holds; none for a request taking JSON.
        let learned = variants.learned_of(&[1; 32]).unwrap();
        assert_eq!(
            learned.own_variant(&[1; 32], &headers(&[("accept", "text/html")])),
            Some(html)
        );
        assert_eq!(
            learned.own_variant(&[1; 32], &headers(&[("accept", "*/*")])),
            None
        );
        // Beside headers the answers vary on, the refusal is one more part of the key.
        let localised = headers(&[
            ("content-type", "application/json"),
            ("vary", "accept-language"),
        ]);
        learn(&variants, [2; 32], &localised, &headers(&[]));
        let de = |accept: &'static str| {
            variants.variant_of(
                &[2; 32],
                &headers(&[("accept-language", "de"), ("accept", accept)]),
            )
        };
        let de_json = de("application/json").unwrap();
        assert_eq!(de("*/*"), Some(de_json), "both take JSON");
        assert!(de("text/html").is_some_and(|html| html != de_json));
    }

    #[test]
    fn the_learned_keys_are_bounded() {
        let variants = Variants::default();
        let response = headers(&[("vary", "accept-language")]);
        let primary = |n: u32| {
            let mut primary = [0; 32];
            primary[..4].copy_from_slice(&n.to_be_bytes());
            primary
        };
        for n in 0..=MAX_LEARNED as u32 {
            learn(&variants, primary(n), &response, &headers(&[]));
        }
        assert_eq!(variants.len(), MAX_LEARNED);
        assert!(
            variants.learned_of(&primary(MAX_LEARNED as u32)).is_some(),
            "the newest is kept"
        );
    }
}
