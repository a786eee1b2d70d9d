//! Freshness per query: the windows of an entry, chosen per request (a builder hook, or a request extension),
//! and the origin's own say (`Cache-Control`, `Expires`), capped by the layer's maximums.
//!
//! Every entry has three windows ([`Windows::new`]`(fresh, stale, stale_if_error)`); the most specific
//! setting wins:
//!
//! | where | how | for |
//! |---|---|---|
//! | one call | the request extension [`CacheOverride::Windows`], or [`CacheOverride::Skip`] to leave the cache out | that call (the origin's `no-cache` and `must-revalidate` still hold) |
//! | the origin | `Cache-Control: s-maxage` / `max-age` (or `Expires`), `stale-while-revalidate=N`, `stale-if-error=N`; `no-cache` stores but always asks first; `must-revalidate` forbids stale answers; a targeted field the layer names ([`targeted_cache_control`](super::RedisCacheLayerBuilder::targeted_cache_control), such as `CDN-Cache-Control`) in place of `Cache-Control` and `Expires` | `GET` and `HEAD` (`origin_freshness_for_post(true)` adds `POST` and `QUERY`), capped by `origin_freshness_cap` (a day each by default); what it does not say comes from the rows below |
//! | the answer's status | [`windows_for_status`](super::RedisCacheLayerBuilder::windows_for_status), for example a `404` kept for seconds (negative caching) | answers with that status |
//! | a route | [`windows_for`](super::RedisCacheLayerBuilder::windows_for), a [`Windows`] from the request's head | every request it answers `Some` for |
//! | the layer | `fresh_for`, `stale_for`, `stale_if_error_for` (60 s, 60 s, 300 s) | the rest |
//!
//! An entry with an `ETag` or `Last-Modified` is refreshed with `If-None-Match` / `If-Modified-Since`: a `304`
//! renews its windows and headers without the body crossing the network again (`fwd-status=304`, counted in
//! `revalidated`), and the caller gets the whole stored response. Such an entry is kept
//! [`keep_for`](super::RedisCacheLayerBuilder::keep_for) past its last window (10 minutes by default), for that
//! alone: a request then asks the origin, conditionally, and is never answered from it unasked.
//!
//! With every window of the layer at zero, only what the origin says keeps a response: the layer is then an
//! HTTP cache that never guesses freshness, as RFC 9111 describes one. `tests/conformance.rs` holds it to the
//! scenarios of the HTTP caching test suite (<https://cache-tests.fyi>).
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower_redis_cache::cache::{CacheOverride, Windows};
//! use tower_redis_cache::{MemoryStore, RedisCacheLayer};
//!
//! # fn main() -> Result<(), tower_redis_cache::error::BoxError> {
//! let minute = Duration::from_secs(60);
//! let layer = RedisCacheLayer::builder(MemoryStore::new(1 << 20))
//!     // Configuration listings change rarely; customer lookups often.
//!     .windows_for(move |parts| {
//!         parts.uri.path().starts_with("/config/").then(|| Windows::new(60 * minute, minute, minute))
//!     })
//!     .build()?;
//! // One call that must not be answered from more than five seconds ago:
//! let mut request = http::Request::get("https://api.example/customers/17").body(())?;
//! request.extensions_mut().insert(CacheOverride::Windows(Windows::new(
//!     Duration::from_secs(5),
//!     Duration::ZERO,
//!     Duration::ZERO,
//! )));
//! # let _ = (layer, request); Ok(()) }
//! ```

use super::decision::is_safe;
use super::directives::{Directives, delta_seconds};
use http::header::{AGE, CONTENT_ENCODING, CONTENT_LENGTH, DATE, ETAG, EXPIRES, LAST_MODIFIED};
use http::{HeaderMap, HeaderName, HeaderValue, Method, request};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The longest any window or lease may be (10 years: longer is a mistake, and Redis refuses expiry times far
/// enough out): the builder refuses longer settings, and the windows a request's hook or extension chooses are
/// cut to it.
pub(crate) const MAX_WINDOW: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// How long an entry answers: fresh (no inner call), then stale (answered at once while one refresh runs),
/// and how long after freshness it may still answer for a failing origin (stale-if-error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Windows {
    fresh_for: Duration,
    stale_for: Duration,
    stale_if_error_for: Duration,
}

impl Windows {
    /// Windows of `fresh_for`, then `stale_for`; `stale_if_error_for` counts from the end of freshness too.
    pub const fn new(
        fresh_for: Duration,
        stale_for: Duration,
        stale_if_error_for: Duration,
    ) -> Self {
        Windows {
            fresh_for,
            stale_for,
            stale_if_error_for,
        }
    }

    /// How long an entry is fresh.
    pub fn fresh_for(&self) -> Duration {
        self.fresh_for
    }

    /// How long after freshness an entry is served at once while it is refreshed.
    pub fn stale_for(&self) -> Duration {
        self.stale_for
    }

    /// How long after freshness an entry may answer for a failing origin.
    pub fn stale_if_error_for(&self) -> Duration {
        self.stale_if_error_for
    }

    /// Each window no longer than the same window of `cap`.
    pub(crate) fn capped(self, cap: Windows) -> Windows {
        Windows {
            fresh_for: self.fresh_for.min(cap.fresh_for),
            stale_for: self.stale_for.min(cap.stale_for),
            stale_if_error_for: self.stale_if_error_for.min(cap.stale_if_error_for),
        }
    }

    /// Each window cut to [`MAX_WINDOW`].
    pub(crate) fn bounded(self) -> Windows {
        self.capped(Windows::new(MAX_WINDOW, MAX_WINDOW, MAX_WINDOW))
    }

    /// Each window the longer of `self`'s and `other`'s.
    pub(crate) fn longest(self, other: Windows) -> Windows {
        Windows {
            fresh_for: self.fresh_for.max(other.fresh_for),
            stale_for: self.stale_for.max(other.stale_for),
            stale_if_error_for: self.stale_if_error_for.max(other.stale_if_error_for),
        }
    }

    /// Whether every window is zero: an entry with them is never stored.
    pub(crate) fn is_zero(&self) -> bool {
        self.fresh_for.is_zero() && self.stale_for.is_zero() && self.stale_if_error_for.is_zero()
    }

    /// The name and value of the first window over `max`, if any.
    pub(crate) fn over(&self, max: Duration) -> Option<(&'static str, Duration)> {
        [
            ("fresh_for", self.fresh_for),
            ("stale_for", self.stale_for),
            ("stale_if_error_for", self.stale_if_error_for),
        ]
        .into_iter()
        .find(|(_, window)| *window > max)
    }
}

/// What one request asks of the cache, as a request extension: it overrides the layer's
/// [`windows_for`](super::RedisCacheLayerBuilder::windows_for) and
/// [`windows_for_status`](super::RedisCacheLayerBuilder::windows_for_status) for this call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CacheOverride {
    /// These windows for the entry this request stores, over the durations the origin's headers name (its
    /// `no-cache` and `must-revalidate` still hold).
    Windows(Windows),
    /// Leave the cache out of this request entirely (`Cache-Status: ...; fwd=bypass; detail=skipped`).
    Skip,
}

/// Chooses the windows of a request from its head; `None` keeps the layer's.
pub(crate) type WindowsFn = Arc<dyn Fn(&request::Parts) -> Option<Windows> + Send + Sync>;

/// What a response's own headers say about its windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct OriginSays {
    /// `s-maxage`, else `max-age`, else `Expires` (against `Date`), less `Age`.
    pub(crate) fresh_for: Option<Duration>,
    /// `stale-while-revalidate=N`.
    pub(crate) stale_for: Option<Duration>,
    /// `stale-if-error=N`.
    pub(crate) stale_if_error_for: Option<Duration>,
    /// `no-cache`: store, but never answer without asking the origin first.
    pub(crate) no_cache: bool,
    /// `must-revalidate`, `proxy-revalidate` or `s-maxage`: never answer stale.
    pub(crate) must_revalidate: bool,
}

impl OriginSays {
    /// Reads a response's `Cache-Control`, `Expires`, `Date` and `Age`, or, when one of the layer's targeted
    /// fields (`targets`, RFC 9213) holds a valid value, that field and `Age`; `now` is the cache's clock (unix
    /// ms).
    pub(crate) fn read(headers: &HeaderMap, targets: &[HeaderName], now: u64) -> Self {
        let mut says = OriginSays::default();
        let (mut s_maxage, mut max_age) = (None, None);
        let directives = Directives::of(headers, targets);
        directives.for_each(|name, argument| {
            // A directive whose argument is no `delta-seconds` is ignored; a repeated one, the shortest counts
            // (RFC 9111 §4.2.1 allows the first, or none at all: the shortest is never longer than the first).
            let seconds = argument
                .and_then(delta_seconds)
                .map(|seconds| Duration::from_secs(seconds.into()));
            let shortest =
                |held: Option<Duration>| seconds.map(|n| held.map_or(n, |m| m.min(n))).or(held);
            match name.to_ascii_lowercase().as_str() {
                "s-maxage" => {
                    s_maxage = shortest(s_maxage);
                    says.must_revalidate = true;
                }
                "max-age" => max_age = shortest(max_age),
                "stale-while-revalidate" => says.stale_for = shortest(says.stale_for),
                "stale-if-error" => says.stale_if_error_for = shortest(says.stale_if_error_for),
                "no-cache" => says.no_cache = true,
                "must-revalidate" | "proxy-revalidate" => says.must_revalidate = true,
                _ => {}
            }
        });
        let expires = || {
            directives
                .honours_expires()
                .then(|| expires_in(headers, now))
                .flatten()
        };
        let lifetime = s_maxage.or(max_age).or_else(expires);
        let age = age_of(headers);
        says.fresh_for = lifetime.map(|lifetime| lifetime.saturating_sub(age));
        says
    }

    /// What the origin forbids (`no-cache`, `must-revalidate`) without the durations it names: for a request
    /// whose own [`CacheOverride`] chose the windows.
    pub(crate) fn directives_only(self) -> Self {
        OriginSays {
            fresh_for: None,
            stale_for: None,
            stale_if_error_for: None,
            ..self
        }
    }

    /// The windows of an entry: what the origin says where it says something, capped by `cap`, and
    /// `defaults` (the layer's or the request's own choice, which `cap` does not bound) elsewhere.
    pub(crate) fn windows(&self, defaults: Windows, cap: Windows) -> Windows {
        let said = |said: Option<Duration>, cap: Duration, default: Duration| {
            said.map_or(default, |said| said.min(cap))
        };
        let mut windows = Windows {
            fresh_for: said(self.fresh_for, cap.fresh_for, defaults.fresh_for),
            stale_for: said(self.stale_for, cap.stale_for, defaults.stale_for),
            stale_if_error_for: said(
                self.stale_if_error_for,
                cap.stale_if_error_for,
                defaults.stale_if_error_for,
            ),
        };
        if self.no_cache {
            // Never answered without asking the origin first, not even for a failing one (RFC 9111 §5.2.2.4):
            // stored for its validators only (`keep_for`).
            windows.fresh_for = Duration::ZERO;
            windows.stale_for = Duration::ZERO;
            windows.stale_if_error_for = Duration::ZERO;
        }
        if self.must_revalidate {
            windows.stale_for = Duration::ZERO;
            windows.stale_if_error_for = Duration::ZERO;
        }
        windows
    }
}

/// `Expires` less `Date` (or less now without a `Date`); zero for a date past or unreadable (RFC 9111
/// §5.3: an invalid `Expires` means already expired).
fn expires_in(headers: &HeaderMap, now: u64) -> Option<Duration> {
    let expires = headers.get(EXPIRES)?;
    let Some(expires) = http_date(expires) else {
        return Some(Duration::ZERO);
    };
    let date = headers
        .get(DATE)
        .and_then(http_date)
        .unwrap_or_else(|| UNIX_EPOCH + Duration::from_millis(now));
    Some(expires.duration_since(date).unwrap_or(Duration::ZERO))
}

/// An HTTP-date (any of the three forms a recipient must accept, RFC 9110 §5.6.7).
pub(crate) fn http_date(value: &HeaderValue) -> Option<SystemTime> {
    httpdate::parse_http_date(value.to_str().ok()?).ok()
}

/// The request headers that ask the origin whether a stored response is still current: `If-None-Match` from
/// its `ETag`, `If-Modified-Since` from its `Last-Modified`. Empty when it has neither, and for a request
/// whose method is not safe (a cached `POST` query): there `If-None-Match` is a precondition on the method
/// itself, which a server that still holds that representation must refuse with `412`, never confirm with a
/// `304` (RFC 9110 §13.1.2), and `If-Modified-Since` is ignored.
pub(crate) fn validators(method: &Method, stored: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::new();
    if !is_safe(method) {
        return out;
    }
    if let Some(etag) = stored.get(ETAG) {
        out.insert(http::header::IF_NONE_MATCH, etag.clone());
    }
    if let Some(modified) = stored.get(LAST_MODIFIED) {
        out.insert(http::header::IF_MODIFIED_SINCE, modified.clone());
    }
    out
}

/// The stored headers updated from a `304` (RFC 9111 §4.3.4): every field the `304` carries replaces the
/// stored one, but `Content-Length` and `Content-Encoding`, which describe the stored body, kept as it is (RFC
/// 9111 §3.2: a cache that stored the body decoded, as this one does for an echoing call's answer, keeps its
/// coding out of such updates). `fresh` is already filtered for storage.
pub(crate) fn merge_headers(stored: &mut HeaderMap, fresh: HeaderMap) {
    let mut current = None;
    for (name, value) in fresh {
        let name = match name {
            Some(name) => {
                if name == CONTENT_LENGTH || name == CONTENT_ENCODING {
                    current = None;
                    continue;
                }
                stored.remove(&name);
                current = Some(name.clone());
                name
            }
            None => match &current {
                Some(name) => name.clone(),
                None => continue,
            },
        };
        stored.append(name, value);
    }
}

/// The age a response already had when it reached this cache: its `Age` field (RFC 9111 §5.1), zero when it
/// has none or an invalid one, and at most 2^31 seconds, which is also what a value too large to read counts
/// as (§1.2.2).
pub(crate) fn age_of(headers: &HeaderMap) -> Duration {
    const LARGEST: u64 = 1 << 31;
    let Some(value) = headers.get(AGE).and_then(|v| v.to_str().ok()) else {
        return Duration::ZERO;
    };
    let digits = value.trim();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Duration::ZERO;
    }
    Duration::from_secs(
        digits
            .parse::<u64>()
            .map_or(LARGEST, |age| age.min(LARGEST)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::testing::{Fields, head};

    const DAY: Duration = Duration::from_secs(86_400);
    const CAP: Windows = Windows::new(DAY, DAY, DAY);
    const DEFAULTS: Windows = Windows::new(
        Duration::from_secs(60),
        Duration::from_secs(60),
        Duration::from_secs(300),
    );

    fn windows(pairs: &[(&'static str, &'static str)]) -> Windows {
        OriginSays::read(&head(pairs), &[], 1_700_000_000_000).windows(DEFAULTS, CAP)
    }

    fn secs(fresh: u64, stale: u64, on_error: u64) -> Windows {
        Windows::new(
            Duration::from_secs(fresh),
            Duration::from_secs(stale),
            Duration::from_secs(on_error),
        )
    }

    #[test]
    fn a_responses_age_is_its_age_field_capped_and_zero_when_invalid() {
        assert_eq!(age_of(&head(&[])), Duration::ZERO);
        assert_eq!(age_of(&head(&[("age", "100")])), Duration::from_secs(100));
        for invalid in ["-1", "1.5", "soon", ""] {
            assert_eq!(
                age_of(&head(&[("age", invalid)])),
                Duration::ZERO,
                "{invalid}"
            );
        }
        assert_eq!(
            age_of(&head(&[("age", "99999999999999999999")])),
            Duration::from_secs(1 << 31),
            "too large to read"
        );
        assert_eq!(
            age_of(&head(&[("age", "9999999999")])),
            Duration::from_secs(1 << 31)
        );
    }

    #[test]
    fn the_origin_sets_the_windows_it_names_and_the_defaults_fill_the_rest() {
        assert_eq!(windows(&[]), DEFAULTS);
        // The cap bounds what the origin says, not what the layer chose.
        let week = Windows::new(7 * DAY, 7 * DAY, 7 * DAY);
        let read = |pairs| OriginSays::read(&head(pairs), &[], 1_700_000_000_000);
        assert_eq!(read(&[]).windows(week, CAP), week);
        assert_eq!(
            read(&[("cache-control", "max-age=31536000")]).windows(week, CAP),
            Windows::new(DAY, 7 * DAY, 7 * DAY)
        );
        assert_eq!(
            windows(&[("cache-control", "max-age=2, stale-while-revalidate=5")]),
            secs(2, 5, 300)
        );
        assert_eq!(
            windows(&[("cache-control", "public, max-age=10, stale-if-error=30")]),
            secs(10, 60, 30)
        );
        // s-maxage wins over max-age, and a shared cache must then revalidate.
        assert_eq!(
            windows(&[(
                "cache-control",
                "max-age=10, s-maxage=20, stale-while-revalidate=9"
            )]),
            secs(20, 0, 0)
        );
        assert_eq!(
            windows(&[("cache-control", "max-age=10, must-revalidate")]),
            secs(10, 0, 0)
        );
        // Age counts against the lifetime.
        assert_eq!(
            windows(&[("cache-control", "max-age=10"), ("age", "4")]),
            secs(6, 60, 300)
        );
        // Never answered unasked, not even for a failing origin: stored for its validators only (`keep_for`).
        assert_eq!(
            windows(&[("cache-control", "no-cache, stale-if-error=60")]),
            secs(0, 0, 0)
        );
        // One that names fields counts as a plain one (see `respect_response_cache_control`).
        assert_eq!(
            windows(&[(
                "cache-control",
                "max-age=600, no-cache=\"set-cookie, x-user\""
            )]),
            secs(0, 0, 0)
        );
        assert_eq!(windows(&[("cache-control", "max-age=junk")]), DEFAULTS);
    }

    #[test]
    fn a_targeted_field_replaces_cache_control_and_expires() {
        let cdn = [HeaderName::from_static("cdn-cache-control")];
        let windows = |pairs| OriginSays::read(&head(pairs), &cdn, 0).windows(DEFAULTS, CAP);
        #[rustfmt::skip]
        let cases: &[(&str, &Fields, Windows)] = &[
            ("its durations, not Cache-Control's",
             &[("cache-control", "max-age=5, must-revalidate"), ("cdn-cache-control", "max-age=600, stale-while-revalidate=30")],
             secs(600, 30, 300)),
            ("Expires is ignored with it",
             &[("expires", "0"), ("cdn-cache-control", "stale-if-error=30")], secs(60, 60, 30)),
            ("Age still counts",
             &[("cdn-cache-control", "s-maxage=600"), ("age", "100")], secs(500, 0, 0)),
            ("its no-cache holds", &[("cache-control", "max-age=600"), ("cdn-cache-control", "no-cache")], secs(0, 0, 0)),
            ("an invalid one leaves Cache-Control and Expires",
             &[("cache-control", "stale-if-error=9"), ("expires", "0"), ("cdn-cache-control", "max-age=600;")],
             secs(0, 60, 9)),
            ("a value no directive takes is unsaid", &[("cdn-cache-control", "max-age=1.5, stale-while-revalidate=-3")], DEFAULTS),
        ];
        for (case, pairs, expected) in cases {
            assert_eq!(windows(pairs), *expected, "{case}");
        }
    }

    #[test]
    fn expires_counts_from_date_and_an_invalid_one_has_expired() {
        assert_eq!(
            windows(&[
                ("date", "Tue, 15 Nov 1994 08:12:31 GMT"),
                ("expires", "Tue, 15 Nov 1994 08:13:31 GMT"),
            ]),
            secs(60, 60, 300)
        );
        assert_eq!(windows(&[("expires", "0")]), secs(0, 60, 300));
        assert_eq!(
            windows(&[
                ("expires", "Tue, 15 Nov 1994 08:13:31 GMT"),
                ("cache-control", "max-age=7"),
            ]),
            secs(7, 60, 300),
            "max-age wins over Expires"
        );
        // Without a `Date`, from the cache's clock (`windows` reads at 2023-11-14 22:13:20 UTC).
        assert_eq!(
            windows(&[("expires", "Tue, 14 Nov 2023 22:14:20 GMT")]),
            secs(60, 60, 300)
        );
    }

    #[test]
    fn a_calls_own_windows_keep_only_what_the_origin_forbids() {
        let own = |value| {
            OriginSays::read(&head(&[("cache-control", value)]), &[], 0)
                .directives_only()
                .windows(DEFAULTS, CAP)
        };
        assert_eq!(
            own("max-age=5, stale-while-revalidate=30, stale-if-error=40"),
            DEFAULTS,
            "the origin's durations give way to the call's"
        );
        assert_eq!(own("max-age=5, must-revalidate"), secs(60, 0, 0));
        assert_eq!(own("max-age=5, no-cache"), secs(0, 0, 0));
    }

    #[test]
    fn caps_win_over_a_huge_max_age() {
        let says = OriginSays::read(&head(&[("cache-control", "max-age=99999999999")]), &[], 0);
        assert_eq!(
            says.windows(DEFAULTS, secs(3600, 10, 10)),
            secs(3600, 60, 300),
            "the cap bounds what the origin says, the defaults give the rest"
        );
        let huge = OriginSays::read(
            &head(&[("cache-control", "max-age=184467440737095516150")]),
            &[],
            0,
        );
        assert_eq!(
            huge.windows(DEFAULTS, CAP),
            Windows {
                fresh_for: CAP.fresh_for,
                ..DEFAULTS
            },
            "a number too large to read is the largest one (RFC 9111 §1.2.2), so the cap"
        );
        for unsaid in [
            "max-age=+60",
            "max-age=-60",
            "max-age=6.0",
            "max-age =60",
            "max-age= 60",
            "max-age",
        ] {
            let says = OriginSays::read(&head(&[("cache-control", unsaid)]), &[], 0);
            assert_eq!(says.windows(DEFAULTS, CAP), DEFAULTS, "{unsaid}: ignored");
        }
        let repeated = OriginSays::read(
            &head(&[
                ("cache-control", "max-age=600, stale-if-error=5, max-age=9"),
                (
                    "cache-control",
                    "max-age=60, stale-if-error=50, stale-while-revalidate=x",
                ),
            ]),
            &[],
            0,
        );
        assert_eq!(
            repeated.windows(DEFAULTS, CAP),
            secs(9, 60, 5),
            "a repeated directive: the shortest counts, a malformed one none"
        );
    }

    #[test]
    fn validators_and_the_304_merge() {
        let stored = head(&[
            ("etag", "\"v1\""),
            ("last-modified", "Tue, 15 Nov 1994 08:12:31 GMT"),
            ("content-type", "application/json"),
            ("content-length", "12"),
            ("x-old", "1"),
        ]);
        for method in [
            Method::GET,
            Method::HEAD,
            Method::from_bytes(b"QUERY").unwrap(),
        ] {
            let asks = validators(&method, &stored);
            assert_eq!(asks["if-none-match"], "\"v1\"", "{method}");
            assert_eq!(asks["if-modified-since"], "Tue, 15 Nov 1994 08:12:31 GMT");
        }
        assert!(validators(&Method::GET, &head(&[])).is_empty());
        assert!(
            validators(&Method::POST, &stored).is_empty(),
            "a POST's If-None-Match would ask the server to refuse it"
        );

        let mut merged = stored.clone();
        merge_headers(
            &mut merged,
            head(&[
                ("etag", "\"v1\""),
                ("cache-control", "max-age=9"),
                ("content-length", "0"),
                ("content-encoding", "gzip"),
                ("x-new", "a"),
                ("x-new", "b"),
            ]),
        );
        assert_eq!(
            merged["content-length"], "12",
            "the stored body's length stays"
        );
        assert!(
            !merged.contains_key("content-encoding"),
            "the stored body is in no coding"
        );
        assert_eq!(merged["cache-control"], "max-age=9");
        assert_eq!(merged["x-old"], "1");
        assert_eq!(merged.get_all("x-new").iter().count(), 2);
    }
}
