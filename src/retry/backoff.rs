//! Exponential backoff with full jitter, and `Retry-After` parsing.

use http::HeaderValue;
use rand::RngExt;
use std::time::{Duration, SystemTime};

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

/// The `Retry-After` of an answer with `headers`, read against the wall clock now ([`parse_retry_after`]).
pub(crate) fn retry_after_of(headers: &http::HeaderMap) -> Option<Duration> {
    headers
        .get(http::header::RETRY_AFTER)
        .and_then(|value| parse_retry_after(value, SystemTime::now()))
}

/// Parses a `Retry-After` value (RFC 9110 section 10.2.3): delay-seconds or an HTTP-date, read against `now`.
///
/// Delay-seconds may carry a fraction (`1.5`), which is kept rather than truncated; a number too large to
/// represent saturates, so it is treated as "longer than any cap". A date in the past means "now". Anything
/// else (negative, empty, garbage, a date in another format) is `None`, and the caller falls back to backoff.
pub(crate) fn parse_retry_after(value: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if text.is_empty() {
        return None;
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return Some(text.parse().map_or(Duration::MAX, Duration::from_secs));
    }
    if text.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        let seconds: f64 = text.parse().ok()?;
        return Some(Duration::try_from_secs_f64(seconds).unwrap_or(Duration::MAX));
    }
    let date = httpdate::parse_http_date(text).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    fn header(s: &str) -> HeaderValue {
        HeaderValue::from_str(s).unwrap()
    }

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
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

        #[test]
        fn retry_after_never_panics(bytes: Vec<u8>) {
            if let Ok(value) = HeaderValue::from_bytes(&bytes) {
                let _ = parse_retry_after(&value, SystemTime::now());
            }
        }
    }
}
