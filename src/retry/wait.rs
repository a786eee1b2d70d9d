//! How long an answer asks the client to wait before sending the request again: `Retry-After`, its millisecond
//! forms, and, on a rate limit, when the spent quota resets.
//!
//! APIs say it in several fields. `Retry-After` (RFC 9110 §10.2.3) is the standard one. OpenAI and Azure add
//! `retry-after-ms` (and Azure `x-ms-retry-after-ms`), in milliseconds. On a rate limit, many say instead when
//! the quota resets: the IETF's `RateLimit` field (draft-ietf-httpapi-ratelimit-headers: `"default";r=0;t=30`),
//! its earlier drafts' `RateLimit-Reset`, and the `X-RateLimit-Reset` of GitHub and the many APIs that copied it
//! (a unix time). GitHub may answer its rate limits with `403 Forbidden` rather than `429`: with
//! `X-RateLimit-Remaining: 0` for its primary limit, with `Retry-After` for its secondary ones; [`is_rate_limit`]
//! counts both as one.

use crate::structured::{Value, field_value, list_with_parameters};
use http::header::RETRY_AFTER;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use std::time::{Duration, SystemTime};

/// The millisecond forms of `Retry-After`, most precise first.
const RETRY_AFTER_MS: [HeaderName; 2] = [
    HeaderName::from_static("retry-after-ms"),
    HeaderName::from_static("x-ms-retry-after-ms"),
];

/// The IETF draft's field: one member per quota policy, `r` what remains of it, `t` seconds until it resets.
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
/// The earlier drafts' fields (`-06` and before): what remains, and delta-seconds until the reset.
const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
/// GitHub's and its followers' fields: what remains, and the reset as a unix time in seconds.
const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// An `X-RateLimit-Reset` from this value on is a unix time (2001-09-09 on); below it, delta-seconds, as some
/// APIs send it.
const UNIX_TIME_FROM: u64 = 1_000_000_000;

/// An `X-RateLimit-Reset` from this value on is a unix time in milliseconds, as some APIs send it (in seconds it
/// would be 33,658 years from now).
const UNIX_MILLIS_FROM: u64 = 1_000_000_000_000;

/// How long an answer with `status` and `headers` asks for before the request is sent again, read against the
/// wall clock now ([`wait_asked`]).
pub(crate) fn wait_of(status: StatusCode, headers: &HeaderMap) -> Option<Duration> {
    wait_asked(status, headers, SystemTime::now())
}

/// How long an answer with `status` and `headers` asks for before the request is sent again, read against
/// `now`: from the first of these that it has and that reads.
///
/// 1. `retry-after-ms`, then `x-ms-retry-after-ms`: milliseconds, a fraction allowed.
/// 2. `Retry-After` ([`parse_retry_after`]).
/// 3. On a rate limit ([`is_rate_limit`]), when the quota that is spent resets: the longest `t` of the
///    `RateLimit` policies with `r=0`; else `RateLimit-Reset` with `RateLimit-Remaining: 0`; else
///    `X-RateLimit-Reset` with `X-RateLimit-Remaining: 0` (a unix time, or delta-seconds below 1,000,000,000).
///    A reset without a quota said to be spent says nothing of this request: another quota may have run out.
///
/// `None` when none does: the caller falls back to its backoff.
pub(crate) fn wait_asked(
    status: StatusCode,
    headers: &HeaderMap,
    now: SystemTime,
) -> Option<Duration> {
    RETRY_AFTER_MS
        .iter()
        .find_map(|name| headers.get(name).and_then(parse_millis))
        .or_else(|| {
            headers
                .get(RETRY_AFTER)
                .and_then(|value| parse_retry_after(value, now))
        })
        .or_else(|| {
            if !is_rate_limit(status, headers) {
                return None;
            }
            spent_policy_reset(headers)
                .or_else(|| {
                    spent(headers, &RATELIMIT_REMAINING)
                        .then(|| headers.get(RATELIMIT_RESET).and_then(delta_seconds))
                        .flatten()
                })
                .or_else(|| {
                    spent(headers, &X_RATELIMIT_REMAINING)
                        .then(|| headers.get(X_RATELIMIT_RESET))
                        .flatten()
                        .and_then(|value| reset_time(value, now))
                })
        })
}

/// Whether an answer says the client ran out of its quota, so the server did not act on the request: `429 Too
/// Many Requests`, or a `403 Forbidden` whose rate-limit fields say nothing is left (`X-RateLimit-Remaining: 0`,
/// `RateLimit-Remaining: 0`, or a `RateLimit` policy with `r=0`), as GitHub answers its primary rate limit, or
/// that asks for a wait (`Retry-After`, `retry-after-ms`), as GitHub answers its secondary rate limits: a refusal
/// that tells the client when to come back is a throttle.
pub(crate) fn is_rate_limit(status: StatusCode, headers: &HeaderMap) -> bool {
    status == StatusCode::TOO_MANY_REQUESTS
        || (status == StatusCode::FORBIDDEN
            && (headers.contains_key(RETRY_AFTER)
                || RETRY_AFTER_MS.iter().any(|name| headers.contains_key(name))
                || spent(headers, &X_RATELIMIT_REMAINING)
                || spent(headers, &RATELIMIT_REMAINING)
                || spent_policy_reset(headers).is_some()))
}

/// Whether the field `name` says nothing remains: its one value is `0`.
fn spent(headers: &HeaderMap, name: &HeaderName) -> bool {
    let mut values = headers.get_all(name).iter();
    matches!(
        (values.next(), values.next()),
        (Some(value), None) if value.as_bytes().trim_ascii() == b"0"
    )
}

/// The longest reset (`t`, seconds) of the `RateLimit` policies with nothing left (`r=0`); `None` when the field
/// does not parse or no policy is spent. A spent policy without a `t` resets at an unknown time: zero, so that
/// the backoff decides.
fn spent_policy_reset(headers: &HeaderMap) -> Option<Duration> {
    if !headers.contains_key(RATELIMIT) {
        return None;
    }
    let value = field_value(headers, &RATELIMIT)?;
    let integer = |parameters: &[(String, Value)], key: &str| {
        parameters.iter().find_map(|(k, v)| match v {
            Value::Bare(n) if k == key => n.parse::<u64>().ok(),
            _ => None,
        })
    };
    list_with_parameters(&value)?
        .iter()
        .filter(|(_, parameters)| integer(parameters, "r") == Some(0))
        .map(|(_, parameters)| Duration::from_secs(integer(parameters, "t").unwrap_or(0)))
        .max()
}

/// A field's value as a number: digits, a fraction allowed (`1500`, `20.5`); `None` for anything else (a sign,
/// an exponent, garbage).
fn number(value: &HeaderValue) -> Option<f64> {
    let text = value.to_str().ok()?.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    text.parse().ok()
}

/// `seconds` as a wait; one too long to represent is the longest, so it is "longer than any cap".
fn wait_of_seconds(seconds: f64) -> Duration {
    Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX)
}

/// Milliseconds, a fraction allowed.
fn parse_millis(value: &HeaderValue) -> Option<Duration> {
    number(value).map(|millis| wait_of_seconds(millis / 1000.0))
}

/// Delta-seconds: digits, a value too large taken as the longest wait.
fn delta_seconds(value: &HeaderValue) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(text.parse().map_or(Duration::MAX, Duration::from_secs))
}

/// An `X-RateLimit-Reset`: a unix time in seconds (a fraction allowed, as Discord sends it), the time until then
/// from `now` (zero once past); below [`UNIX_TIME_FROM`], delta-seconds; from [`UNIX_MILLIS_FROM`] on, a unix
/// time in milliseconds.
fn reset_time(value: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let mut seconds = number(value)?;
    if seconds >= UNIX_MILLIS_FROM as f64 {
        seconds /= 1000.0;
    }
    let at = wait_of_seconds(seconds);
    if at < Duration::from_secs(UNIX_TIME_FROM) {
        return Some(at);
    }
    let since_epoch = now.duration_since(SystemTime::UNIX_EPOCH).ok()?;
    Some(at.saturating_sub(since_epoch))
}

/// Parses a `Retry-After` value (RFC 9110 section 10.2.3): delay-seconds or an HTTP-date, read against `now`.
///
/// Delay-seconds may carry a fraction (`1.5`), which is kept rather than truncated; a number too large to
/// represent saturates, so it is treated as "longer than any cap". A date in the past means "now". Anything
/// else (negative, empty, garbage, a date in another format) is `None`, and the caller falls back to backoff.
pub(crate) fn parse_retry_after(value: &HeaderValue, now: SystemTime) -> Option<Duration> {
    if let Some(seconds) = delta_seconds(value).or_else(|| number(value).map(wait_of_seconds)) {
        return Some(seconds);
    }
    let date = httpdate::parse_http_date(value.to_str().ok()?.trim()).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn header(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| (HeaderName::from_static(name), header(value)))
            .collect()
    }

    /// An answer's fields, by name.
    type Fields<'a> = Vec<(&'static str, &'a str)>;

    const NOW: u64 = 1_700_000_000;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(NOW)
    }

    #[test]
    fn retry_after_forms() {
        let now = now();
        assert_eq!(
            parse_retry_after(&header("2"), now),
            Some(Duration::from_secs(2))
        );
        assert_eq!(parse_retry_after(&header(" 0 "), now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after(&header("1.5"), now),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            parse_retry_after(&header("99999999999999999999999"), now),
            Some(Duration::MAX)
        );
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&header(&later), now),
            Some(Duration::from_secs(30))
        );
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&header(&earlier), now),
            Some(Duration::ZERO)
        );
        // RFC 850 and asctime forms are HTTP-dates too.
        assert!(parse_retry_after(&header("Sunday, 06-Nov-94 08:49:37 GMT"), now).is_some());
        assert!(parse_retry_after(&header("Sun Nov  6 08:49:37 1994"), now).is_some());
        for bad in [
            "",
            "-1",
            "1.2.3",
            "soon",
            "1e3",
            "Tue, 31 Feb 2026 25:00:00 GMT",
        ] {
            assert_eq!(parse_retry_after(&header(bad), now), None, "{bad:?}");
        }
        let opaque = HeaderValue::from_bytes(b"\xff\xfe").unwrap();
        assert_eq!(parse_retry_after(&opaque, now), None);
    }

    #[test]
    fn the_wait_an_answer_asks_for() {
        let in_90s = (NOW + 90).to_string();
        let past = (NOW - 5).to_string();
        let in_90_5s = format!("{in_90s}.5");
        let in_90s_ms = ((NOW + 90) * 1000 + 250).to_string();
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        let limited = StatusCode::TOO_MANY_REQUESTS;
        let forbidden = StatusCode::FORBIDDEN;
        let unavailable = StatusCode::SERVICE_UNAVAILABLE;
        #[rustfmt::skip]
        let table: Vec<(&str, StatusCode, Fields<'_>, Option<Duration>)> = vec![
            ("nothing", limited, vec![], None),
            ("Retry-After", unavailable, vec![("retry-after", "3")], Some(s(3))),
            ("milliseconds first", limited, vec![("retry-after", "3"), ("retry-after-ms", "1500")], Some(ms(1500))),
            ("Azure's milliseconds", limited, vec![("x-ms-retry-after-ms", "250.5")], Some(Duration::from_micros(250_500))),
            ("unreadable milliseconds: Retry-After", limited, vec![("retry-after-ms", "soon"), ("retry-after", "3")], Some(s(3))),
            ("RateLimit: the spent policy's reset", limited, vec![("ratelimit", r#""burst";r=0;t=7, "day";r=900;t=80000"#)], Some(s(7))),
            ("RateLimit: the longest of the spent", limited, vec![("ratelimit", r#""burst";r=0;t=7, "day";r=0;t=600"#)], Some(s(600))),
            ("RateLimit over two lines", limited, vec![("ratelimit", r#""burst";r=5;t=7"#), ("ratelimit", r#""day";r=0;t=60"#)], Some(s(60))),
            ("RateLimit: none spent", limited, vec![("ratelimit", r#""burst";r=5;t=7"#)], None),
            ("RateLimit: not a list", limited, vec![("ratelimit", "r=0;t=7;;")], None),
            ("RateLimit: Retry-After first", limited, vec![("retry-after", "1"), ("ratelimit", r#""burst";r=0;t=7"#)], Some(s(1))),
            ("earlier drafts", limited, vec![("ratelimit-remaining", "0"), ("ratelimit-reset", "12")], Some(s(12))),
            ("earlier drafts: some left", limited, vec![("ratelimit-remaining", "3"), ("ratelimit-reset", "12")], None),
            ("GitHub: a unix time", forbidden, vec![("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", &in_90s)], Some(s(90))),
            ("GitHub: on a 429", limited, vec![("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", &in_90s)], Some(s(90))),
            ("a unix time past", limited, vec![("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", &past)], Some(Duration::ZERO)),
            ("delta-seconds", limited, vec![("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "30")], Some(s(30))),
            ("the longest delta-seconds", limited, vec![("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "999999999")], Some(s(999_999_999))),
            ("the first unix time (2001)", limited, vec![("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", "1000000000")], Some(Duration::ZERO)),
            ("a unix time with a fraction", limited, vec![("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", &in_90_5s)], Some(ms(90_500))),
            ("a unix time in milliseconds", limited, vec![("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", &in_90s_ms)], Some(ms(90_250))),
            ("some left: another quota ran out", limited, vec![("x-ratelimit-remaining", "12"), ("x-ratelimit-reset", &in_90s)], None),
            ("no remaining said", limited, vec![("x-ratelimit-reset", &in_90s)], None),
            // A reset is no wait unless the answer is a rate limit.
            ("not a rate limit", unavailable, vec![("x-ratelimit-remaining", "0"), ("x-ratelimit-reset", &in_90s)], None),
            ("a plain 403", forbidden, vec![("x-ratelimit-remaining", "4999"), ("x-ratelimit-reset", &in_90s)], None),
        ];
        for (why, status, fields, expected) in table {
            assert_eq!(
                wait_asked(status, &headers(&fields), now()),
                expected,
                "{why}"
            );
        }
    }

    #[test]
    fn a_403_is_a_rate_limit_when_a_quota_is_spent_or_it_asks_for_a_wait() {
        let (limited, forbidden) = (StatusCode::TOO_MANY_REQUESTS, StatusCode::FORBIDDEN);
        #[rustfmt::skip]
        let table: Vec<(StatusCode, Fields<'_>, bool)> = vec![
            (limited, vec![], true),
            (forbidden, vec![], false),
            (forbidden, vec![("x-ratelimit-remaining", "0")], true),
            (forbidden, vec![("ratelimit-remaining", " 0 ")], true),
            (forbidden, vec![("ratelimit", r#""hour";r=0;t=60"#)], true),
            // GitHub's secondary rate limits: a 403 that says when to come back.
            (forbidden, vec![("retry-after", "60")], true),
            (forbidden, vec![("retry-after-ms", "500")], true),
            (forbidden, vec![("x-ratelimit-remaining", "10")], false),
            (forbidden, vec![("x-ratelimit-remaining", "0"), ("x-ratelimit-remaining", "3")], false),
            (StatusCode::UNAUTHORIZED, vec![("x-ratelimit-remaining", "0")], false),
            (StatusCode::UNAUTHORIZED, vec![("retry-after", "60")], false),
        ];
        for (status, fields, expected) in table {
            assert_eq!(
                is_rate_limit(status, &headers(&fields)),
                expected,
                "{status} {fields:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn retry_after_never_panics(bytes: Vec<u8>) {
            if let Ok(value) = HeaderValue::from_bytes(&bytes) {
                let _ = parse_retry_after(&value, SystemTime::now());
            }
        }

        #[test]
        fn no_wait_field_panics(bytes: Vec<u8>, pick in 0usize..5) {
            let names = ["retry-after-ms", "ratelimit", "ratelimit-reset", "x-ratelimit-reset", "x-ms-retry-after-ms"];
            if let Ok(value) = HeaderValue::from_bytes(&bytes) {
                let mut fields = headers(&[("x-ratelimit-remaining", "0"), ("ratelimit-remaining", "0")]);
                fields.insert(HeaderName::from_static(names[pick]), value);
                let _ = wait_asked(StatusCode::TOO_MANY_REQUESTS, &fields, SystemTime::now());
                let _ = is_rate_limit(StatusCode::FORBIDDEN, &fields);
            }
        }
    }
}
